//! Reaching the database: the configured URL, its password by reference,
//! TLS (rustls) when the URL asks for it, the connection pool, and the
//! dedicated connections that live outside it (the owner lock, LISTEN).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{unavailable, why};
use crate::config::PostgresConfig;
use crate::store::StoreError;

/// Connections kept per process unless `pool_size` says otherwise.
const DEFAULT_POOL_SIZE: usize = 16;

/// How long opening a connection, or waiting for a pooled one, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the database is and how to talk to it.
#[derive(Clone)]
pub(super) struct Target {
    /// Connection parameters, password included (tokio-postgres's `Debug`
    /// hides it; lockstep never prints this).
    pub config: Config,
    tls: Tls,
    pool_size: usize,
}

#[derive(Clone)]
enum Tls {
    Plain,
    Rustls(MakeRustlsConnect),
}

impl Target {
    /// Reads `[store]`: refuses a password in the URL, resolves the
    /// password reference, and prepares TLS when `sslmode=require`.
    pub fn new(c: &PostgresConfig) -> Result<Self, StoreError> {
        let mut config: Config = c.url.parse().map_err(|e| {
            unavailable(format!("[store] url is not a PostgreSQL URL: {}", why(&e)))
        })?;
        if config.get_password().is_some() {
            return Err(unavailable(
                "[store] url contains a password: remove it and give it by reference, password = \"env:NAME\" or \"file:PATH\"",
            ));
        }
        if let Some(password) = &c.password {
            let secret = password
                .resolve()
                .map_err(|e| unavailable(format!("[store] password: {e}")))?;
            config.password(secret.expose_secret());
        }
        if config.get_application_name().is_none() {
            config.application_name("lockstep");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Tls::Rustls(rustls(c.ca_file.as_deref())?),
            // `prefer` (the default) and `disable`: no TLS; a URL that
            // needs it says `require`.
            _ => Tls::Plain,
        };
        Ok(Self {
            config,
            tls,
            pool_size: c.pool_size.unwrap_or(DEFAULT_POOL_SIZE).max(2),
        })
    }

    /// What to show of it: host and database, never credentials.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        format!(
            "{}/{}",
            hosts.join(","),
            self.config.get_dbname().unwrap_or("")
        )
    }

    /// The pool the ledger's transactions and the reads use.
    pub fn pool(&self) -> Result<Pool, StoreError> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &self.tls {
            Tls::Plain => Manager::from_config(self.config.clone(), NoTls, manager_config),
            Tls::Rustls(tls) => {
                Manager::from_config(self.config.clone(), tls.clone(), manager_config)
            }
        };
        Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| unavailable(format!("connection pool: {}", why(&e))))
    }

    /// A connection of its own, outside the pool; `on_notify` runs for
    /// every notification it receives. The task ends when the connection
    /// does.
    pub async fn dedicated(
        &self,
        on_notify: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Result<(Client, JoinHandle<()>), StoreError> {
        let connect_error = |e: tokio_postgres::Error| {
            unavailable(format!(
                "cannot connect to {}: {}",
                self.describe(),
                why(&e)
            ))
        };
        match &self.tls {
            Tls::Plain => {
                let (client, conn) = self.config.connect(NoTls).await.map_err(connect_error)?;
                Ok((client, drive(conn, on_notify)))
            }
            Tls::Rustls(tls) => {
                let (client, conn) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(connect_error)?;
                Ok((client, drive(conn, on_notify)))
            }
        }
    }
}

/// Runs a connection, handing its notifications to `on_notify`.
fn drive<S, T>(
    mut conn: Connection<S, T>,
    on_notify: Option<Arc<dyn Fn() + Send + Sync>>,
) -> JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Some(f) = &on_notify {
                        f();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %why(&e), "PostgreSQL connection lost");
                    break;
                }
            }
        }
    })
}

/// TLS to the database, the server's certificate verified against
/// `ca_file` (PEM) or the Mozilla roots.
fn rustls(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| unavailable(format!("[store] ca_file {}: {e}", path.display())))?;
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert
                    .map_err(|e| unavailable(format!("[store] ca_file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| unavailable(format!("[store] ca_file {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(unavailable(format!(
                    "[store] ca_file {} holds no certificate",
                    path.display()
                )));
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::api::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| unavailable(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
