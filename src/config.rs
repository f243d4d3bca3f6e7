//! The configuration file: one TOML document (examples in `hsm-config/`).
//!
//! Relative paths in it (the CA directory, `file:` secrets, a relative
//! module path) are relative to the file's own directory, so a
//! configuration works from wherever lockstep is started. Secrets are only
//! ever references (`env:NAME`, `file:PATH`).
//!
//! The key backend (`[backend] type`) and the store (`[store] type`) are
//! chosen here; each kind is built in by a Cargo feature ([`Feature`]). A
//! file naming a kind this build leaves out is refused by [`Config::parse`]
//! with [`ConfigError::NotBuilt`], which names the feature to enable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

#[cfg(feature = "pkcs11")]
use crate::keys::pkcs11::{Pkcs11Backend, Pkcs11Config};
#[cfg(feature = "tpm")]
use crate::keys::tpm::{TpmBackend, TpmConfig};
use crate::keys::{KeyBackend, KeyError, KeyRef};
use crate::secret::SecretRef;
use crate::x509::SubjectName;

mod metrics;
pub mod signals;
mod webhooks;

pub use metrics::MetricsConfig;
pub use webhooks::{WEBHOOK_EVENTS, WebhookConfig};

/// A part of lockstep that is built in only with its Cargo feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// The PKCS#11 key backend (`cryptoki`).
    Pkcs11,
    /// The TPM 2.0 key backend (`tss-esapi`, which needs tpm2-tss).
    Tpm,
    /// The embedded SQLite store (`rusqlite`).
    Sqlite,
    /// The PostgreSQL store (`tokio-postgres`), shared by several replicas.
    Postgres,
}

impl Feature {
    /// The Cargo feature's name, which is also the `type` that selects it
    /// in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pkcs11 => "pkcs11",
            Self::Tpm => "tpm",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// Whether this build of lockstep has it.
    pub fn is_built(self) -> bool {
        match self {
            Self::Pkcs11 => cfg!(feature = "pkcs11"),
            Self::Tpm => cfg!(feature = "tpm"),
            Self::Sqlite => cfg!(feature = "sqlite"),
            Self::Postgres => cfg!(feature = "postgres"),
        }
    }

    /// Every feature this build has (logged at start).
    pub fn built() -> Vec<Self> {
        [Self::Pkcs11, Self::Tpm, Self::Sqlite, Self::Postgres]
            .into_iter()
            .filter(|f| f.is_built())
            .collect()
    }

    /// What to tell someone whose configuration needs this feature.
    pub fn missing(self, what: &str) -> String {
        format!(
            "{what} is not built into this lockstep: build it with the Cargo feature `{name}` (`cargo build --features {name}`; it is in the default set)",
            name = self.name()
        )
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the keys live.
    pub backend: BackendConfig,
    /// Which keys lockstep uses, by role.
    pub keys: KeysConfig,
    /// The CA's names, validity and files.
    pub ca: CaConfig,
    /// The issuer service (`lockstep serve`).
    #[serde(default)]
    pub server: Option<ServerConfig>,
    /// Where state is kept.
    #[serde(default, deserialize_with = "store_section")]
    pub store: Option<StoreConfig>,
    /// Where the policy file is.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// How revocation is published.
    #[serde(default)]
    pub revocation: RevocationConfig,
    /// How the audit trail is checkpointed.
    #[serde(default)]
    pub audit: AuditConfig,
    /// How committed events are published (`GET /v1/events`).
    #[serde(default)]
    pub events: EventsConfig,
    /// How callers authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Who may read `GET /metrics`.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Endpoints told of committed session events (`[[webhook]]`).
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
    /// Shared Signals transmitters whose SETs end sessions
    /// (`[[transmitter]]`).
    #[serde(default, rename = "transmitter")]
    pub transmitters: Vec<signals::TransmitterConfig>,
    /// Where this configuration was read from (set by [`Config::load`]).
    #[serde(skip)]
    pub source: PathBuf,
}

/// The key backend, chosen by `type`. A backend this build leaves out is
/// still recognised (its settings read as `NotBuilt`), so the refusal can
/// name the Cargo feature instead of calling the type unknown.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BackendConfig {
    /// A PKCS#11 token.
    #[cfg(feature = "pkcs11")]
    Pkcs11(Pkcs11Config),
    /// A PKCS#11 token, in a build without the `pkcs11` feature.
    #[cfg(not(feature = "pkcs11"))]
    Pkcs11(NotBuilt),
    /// A TPM 2.0; keys by persistent `handle` in `[keys.*]`.
    #[cfg(feature = "tpm")]
    Tpm(TpmConfig),
    /// A TPM 2.0, in a build without the `tpm` feature.
    #[cfg(not(feature = "tpm"))]
    Tpm(NotBuilt),
}

impl BackendConfig {
    /// The Cargo feature that builds this backend in.
    pub fn feature(&self) -> Feature {
        match self {
            Self::Pkcs11(_) => Feature::Pkcs11,
            Self::Tpm(_) => Feature::Tpm,
        }
    }

    /// Prepares the backend (connects lazily, on first use).
    pub fn open(&self) -> Result<Arc<dyn KeyBackend>, KeyError> {
        match self {
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(c) => Ok(Arc::new(Pkcs11Backend::new(c)?)),
            #[cfg(feature = "tpm")]
            Self::Tpm(c) => Ok(Arc::new(TpmBackend::new(c)?)),
            #[cfg(not(all(feature = "pkcs11", feature = "tpm")))]
            other => Err(KeyError::Config(other.feature().missing(&format!(
                "[backend] type = \"{}\"",
                other.feature().name()
            )))),
        }
    }
}

/// The settings of a backend this build leaves out: accepted as anything
/// and discarded, because [`Config::parse`] refuses the file anyway.
#[cfg(not(all(feature = "pkcs11", feature = "tpm")))]
#[derive(Clone, Copy, Debug)]
pub struct NotBuilt;

#[cfg(not(all(feature = "pkcs11", feature = "tpm")))]
impl<'de> Deserialize<'de> for NotBuilt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Self)
    }
}

/// The keys lockstep uses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The root CA key (absent when the root is external).
    pub root: KeyRef,
    /// The issuing CA key: signs every certificate, CRL and OCSP answer.
    pub issuing: KeyRef,
    /// The key that signs session-bound tokens (JWTs); tokens are
    /// unavailable without it.
    #[serde(default)]
    pub token: Option<KeyRef>,
    /// The key that signs audit checkpoints; the trail is chained but not
    /// signed without it.
    #[serde(default)]
    pub audit: Option<KeyRef>,
    /// The SSH certificate authority's key: signs OpenSSH user
    /// certificates (profile `ssh-user`) and nothing else.
    #[serde(default)]
    pub ssh: Option<KeyRef>,
    /// The timestamp authority's key: signs RFC 3161 timestamps of the
    /// signatures a session's code-signing certificate made, certified by
    /// the issuing CA for timeStamping alone.
    #[serde(default)]
    pub tsa: Option<KeyRef>,
}

impl KeysConfig {
    /// The keys of the service beside the CA (created by `init` when
    /// missing).
    pub fn service_keys(&self) -> Vec<(&'static str, &KeyRef)> {
        self.token
            .iter()
            .map(|k| ("token", k))
            .chain(self.audit.iter().map(|k| ("audit", k)))
            .chain(self.ssh.iter().map(|k| ("ssh", k)))
            .chain(self.tsa.iter().map(|k| ("tsa", k)))
            .collect()
    }

    /// Every configured key with its role (`root`, `issuing`, then the
    /// service keys).
    pub fn roles(&self) -> Vec<(&'static str, KeyRef)> {
        [("root", &self.root), ("issuing", &self.issuing)]
            .into_iter()
            .chain(self.service_keys())
            .map(|(role, key)| (role, key.clone()))
            .collect()
    }
}

fn default_root_subject() -> SubjectName {
    SubjectName::cn("lockstep Root CA").with_organization("lockstep")
}

fn default_issuing_subject() -> SubjectName {
    SubjectName::cn("lockstep Issuing CA").with_organization("lockstep")
}

fn default_root_days() -> u32 {
    3650
}

fn default_issuing_days() -> u32 {
    1095
}

/// The CA's names, lifetimes and where its certificates are stored.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Directory for `root.pem`, `issuing.pem`, `chain.pem` and
    /// `issuing.csr.pem`.
    pub dir: PathBuf,
    /// Subject of the self-signed root.
    #[serde(default = "default_root_subject")]
    pub root_subject: SubjectName,
    /// Subject of the issuing CA.
    #[serde(default = "default_issuing_subject")]
    pub issuing_subject: SubjectName,
    /// Lifetime of the root certificate, in days.
    #[serde(default = "default_root_days")]
    pub root_validity_days: u32,
    /// Lifetime of the issuing CA certificate, in days (capped by the root).
    #[serde(default = "default_issuing_days")]
    pub issuing_validity_days: u32,
}

fn default_hostnames() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

fn default_sweep() -> String {
    "1s".into()
}

fn default_max_body() -> usize {
    64 * 1024
}

fn default_tls_days() -> u32 {
    30
}

fn default_organization() -> String {
    "lockstep".into()
}

/// `[server]`: the HTTPS issuer service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:8443`.
    pub listen: String,
    /// Names and addresses in the server certificate lockstep mints for
    /// itself at start (when `certificate` is not given).
    #[serde(default = "default_hostnames")]
    pub hostnames: Vec<String>,
    /// Lifetime of that server certificate, in days (renewed at start).
    #[serde(default = "default_tls_days")]
    pub certificate_days: u32,
    /// A PEM certificate chain to serve instead.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// Its private key (PEM), by reference.
    #[serde(default)]
    pub private_key: Option<crate::secret::SecretRef>,
    /// How often expired and abandoned sessions are closed in the
    /// background (they are also closed on access).
    #[serde(default = "default_sweep")]
    pub sweep_interval: String,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// `O` of the subject of session certificates.
    #[serde(default = "default_organization")]
    pub organization: String,
    /// The URL relying parties reach the service at (token `iss`, CRL and
    /// OCSP locations in certificates). Default: `https://` + the first
    /// host name + the listening port.
    #[serde(default)]
    pub public_url: Option<String>,
}

fn default_checkpoint_every() -> u64 {
    1000
}

fn default_checkpoint_interval() -> String {
    "30s".into()
}

/// `[audit]`: when checkpoints of the audit trail are signed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Sign a checkpoint after this many new entries...
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// ...or when this long has passed with unsigned entries (and always at
    /// shutdown).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: String,
    /// Refused calls without a valid credential are recorded one by one at
    /// this rate per second on average (0: every one is recorded); beyond
    /// it they are counted in a `refusals_counted` entry, so anyone's flood
    /// cannot grow the trail without bound.
    #[serde(default = "default_anonymous_per_sec")]
    pub anonymous_refusals_per_sec: u32,
    /// ...and at most this many at once.
    #[serde(default = "default_anonymous_burst")]
    pub anonymous_refusals_burst: u32,
}

fn default_anonymous_per_sec() -> u32 {
    5
}

fn default_anonymous_burst() -> u32 {
    100
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval: default_checkpoint_interval(),
            anonymous_refusals_per_sec: default_anonymous_per_sec(),
            anonymous_refusals_burst: default_anonymous_burst(),
        }
    }
}

impl AuditConfig {
    /// The interval in seconds.
    pub fn interval_secs(&self) -> Result<i64, String> {
        let d = humantime::parse_duration(&self.checkpoint_interval)
            .map_err(|e| format!("[audit] checkpoint_interval: {e}"))?;
        if d.as_secs() == 0 || self.checkpoint_every == 0 {
            return Err(
                "[audit] checkpoint_interval and checkpoint_every must be at least 1".into(),
            );
        }
        Ok(d.as_secs() as i64)
    }
}

fn default_crl_validity() -> String {
    "10m".into()
}

fn default_ocsp_validity() -> String {
    "5m".into()
}

/// `[revocation]`: how long published revocation information is valid.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// A CRL's lifetime (`nextUpdate - thisUpdate`); it is rebuilt at half
    /// of it, and at once when a certificate is revoked.
    #[serde(default = "default_crl_validity")]
    pub crl_validity: String,
    /// An OCSP response's lifetime (`nextUpdate - thisUpdate`).
    #[serde(default = "default_ocsp_validity")]
    pub ocsp_validity: String,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            crl_validity: default_crl_validity(),
            ocsp_validity: default_ocsp_validity(),
        }
    }
}

impl RevocationConfig {
    /// The CRL validity in seconds.
    pub fn crl_secs(&self) -> Result<i64, String> {
        secs("crl_validity", &self.crl_validity)
    }

    /// The OCSP validity in seconds.
    pub fn ocsp_secs(&self) -> Result<i64, String> {
        secs("ocsp_validity", &self.ocsp_validity)
    }
}

fn secs(name: &str, text: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("[revocation] {name} `{text}`: {e}"))?;
    if d.as_secs() < 10 || d.as_secs() > 7 * 86_400 {
        return Err(format!("[revocation] {name} must be 10s to 7 days"));
    }
    Ok(d.as_secs() as i64)
}

/// `[events]`: how committed events are published to subscribers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// An event stream silent this long gets a heartbeat, so a proxy or a
    /// gateway notices a dead stream.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: String,
    /// How often the store is read for commits of other processes sharing
    /// it (this process's own commits are published at once).
    #[serde(default = "default_poll")]
    pub poll: String,
    /// Events kept for subscribers that fall behind; one further behind
    /// reads the store instead (memory stays bounded, writers never wait).
    #[serde(default = "default_events_buffer")]
    pub buffer: usize,
}

fn default_heartbeat() -> String {
    "15s".into()
}

fn default_poll() -> String {
    "1s".into()
}

fn default_events_buffer() -> usize {
    1024
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            heartbeat: default_heartbeat(),
            poll: default_poll(),
            buffer: default_events_buffer(),
        }
    }
}

impl EventsConfig {
    /// The settings of the event hub, checked: heartbeat and poll from
    /// 100 ms to 1 hour, a buffer of 1 to 1,000,000 events.
    pub fn settings(&self) -> Result<crate::events::Settings, String> {
        let interval = |name: &str, text: &str| {
            let d = humantime::parse_duration(text)
                .map_err(|e| format!("[events] {name} `{text}`: {e}"))?;
            if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(3600)
            {
                return Err(format!("[events] {name} must be 100ms to 1h"));
            }
            Ok(d)
        };
        if self.buffer == 0 || self.buffer > 1_000_000 {
            return Err("[events] buffer must be 1 to 1000000".into());
        }
        Ok(crate::events::Settings {
            buffer: self.buffer,
            poll: interval("poll", &self.poll)?,
            heartbeat: interval("heartbeat", &self.heartbeat)?,
        })
    }
}

/// `[store]`: where state is kept, chosen by `type`.
///
/// ```toml
/// [store]
/// type = "sqlite"
/// path = "var/lockstep.db"
/// ```
///
/// `sqlite = "var/lockstep.db"` alone is short for the same.
///
/// ```toml
/// [store]
/// type = "postgres"
/// url = "postgres://lockstep@db.internal/lockstep?sslmode=require"
/// password = "env:LOCKSTEP_DB_PASSWORD"
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StoreConfig {
    /// The embedded store: one SQLite file, no server.
    Sqlite(SqliteConfig),
    /// A PostgreSQL database, which several lockstep replicas may share.
    Postgres(PostgresConfig),
}

/// `[store] type = "postgres"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Where the database is: a `postgres://` URL or libpq keyword
    /// parameters (`host=/run/postgresql dbname=lockstep`). A password in
    /// it is refused: give it by reference in `password`. TLS is used
    /// when it says `sslmode=require` (the server's certificate is then
    /// always verified).
    pub url: String,
    /// The password, by reference (`env:NAME` or `file:PATH`).
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// PEM file of the CA certificates that sign the server's certificate
    /// (default: the Mozilla root program).
    pub ca_file: Option<PathBuf>,
    /// Connections kept for this process (default 16).
    pub pool_size: Option<usize>,
}

/// `[store] type = "sqlite"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// The SQLite file (created if missing).
    pub path: PathBuf,
}

impl StoreConfig {
    /// The Cargo feature that builds this store in.
    pub fn feature(&self) -> Feature {
        match self {
            Self::Sqlite(_) => Feature::Sqlite,
            Self::Postgres(_) => Feature::Postgres,
        }
    }

    /// The SQLite file, when the store is one (`lockstep audit` reads it
    /// offline).
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(c) => Some(&c.path),
            Self::Postgres(_) => None,
        }
    }
}

/// Reads `[store]`, taking the short form `sqlite = "PATH"` (the only form
/// before stores had a `type`) for `type = "sqlite"` and `path = "PATH"`.
fn store_section<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StoreConfig>, D::Error> {
    let mut table = toml::Table::deserialize(d)?;
    if !table.contains_key("type")
        && let Some(path) = table.remove("sqlite")
    {
        table.insert("type".into(), "sqlite".into());
        table.insert("path".into(), path);
    }
    StoreConfig::deserialize(toml::Value::Table(table))
        .map(Some)
        .map_err(|e| serde::de::Error::custom(e.message()))
}

/// `[policy]`: the policy file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Path of the policy TOML.
    pub file: PathBuf,
}

/// `[auth]`: bearer tokens accepted from callers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A tokens file maintained by `lockstep auth add-token`.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Static API tokens given inline (names and SHA-256 hashes).
    #[serde(default)]
    pub token: Vec<crate::auth::tokens::TokenEntry>,
    /// Trusted OIDC issuers.
    #[serde(default)]
    pub oidc: Vec<crate::auth::oidc::OidcIssuerConfig>,
}

/// Why a configuration could not be used. The message names the file and
/// the place in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("configuration {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where (line and column, key path).
        message: String,
    },
    /// The file names a key backend or store this build leaves out.
    #[error("configuration {path}: {}", feature.missing(what))]
    NotBuilt {
        /// The file.
        path: PathBuf,
        /// The setting that names it, e.g. `[backend] type = "tpm"`.
        what: String,
        /// The Cargo feature that builds it in.
        feature: Feature,
    },
}

impl ConfigError {
    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Read { .. } | Self::Invalid { .. } => "config_invalid",
            Self::NotBuilt { .. } => "feature_not_built",
        }
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| invalid(locate(text, &e)))?;
        if let Some((what, feature)) = config.not_built() {
            return Err(ConfigError::NotBuilt {
                path: path.to_owned(),
                what,
                feature,
            });
        }
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        config.source = path.to_owned();
        config.ca.dir = clean(&base.join(&config.ca.dir));
        match &mut config.store {
            Some(StoreConfig::Sqlite(sqlite)) => sqlite.path = clean(&base.join(&sqlite.path)),
            Some(StoreConfig::Postgres(pg)) => {
                pg.password = pg.password.take().map(|p| p.relative_to(&base));
                if let Some(ca) = &mut pg.ca_file {
                    *ca = clean(&base.join(&*ca));
                }
            }
            None => {}
        }
        if let Some(policy) = &mut config.policy {
            policy.file = clean(&base.join(&policy.file));
        }
        if let Some(file) = &mut config.auth.tokens_file {
            *file = clean(&base.join(&*file));
        }
        if let Some(metrics) = &mut config.metrics {
            metrics.resolve_paths(&base);
        }
        for webhook in &mut config.webhooks {
            webhook.resolve_paths(&base);
        }
        webhooks::check_all(&config.webhooks).map_err(invalid)?;
        if let Some(server) = &mut config.server {
            server
                .listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| invalid(format!("[server] listen `{}`: {e}", server.listen)))?;
            humantime::parse_duration(&server.sweep_interval)
                .map_err(|e| invalid(format!("[server] sweep_interval: {e}")))?;
            if let Some(cert) = &mut server.certificate {
                *cert = clean(&base.join(&*cert));
            }
            if let Some(key) = server.private_key.take() {
                server.private_key = Some(key.relative_to(&base));
            }
            if server.certificate.is_some() != server.private_key.is_some() {
                return Err(invalid(
                    "[server]: give both `certificate` and `private_key`, or neither".into(),
                ));
            }
            if server.hostnames.is_empty() && server.certificate.is_none() {
                return Err(invalid("[server] hostnames must not be empty".into()));
            }
            if let Some(url) = &server.public_url
                && !url.starts_with("https://")
            {
                return Err(invalid(format!(
                    "[server] public_url `{url}` must start with https://"
                )));
            }
            if server.max_body_bytes < 1024 {
                return Err(invalid(
                    "[server] max_body_bytes must be at least 1024".into(),
                ));
            }
        }
        match &mut config.backend {
            #[cfg(feature = "pkcs11")]
            BackendConfig::Pkcs11(p) => resolve_pkcs11(p, &base).map_err(invalid)?,
            #[cfg(feature = "tpm")]
            BackendConfig::Tpm(t) => resolve_tpm(t, &config.keys, &base).map_err(invalid)?,
            // Refused above, before any path was resolved.
            #[cfg(not(all(feature = "pkcs11", feature = "tpm")))]
            _ => {}
        }
        for (role, key) in [
            ("root", &config.keys.root),
            ("issuing", &config.keys.issuing),
        ] {
            if key.label.is_empty() {
                return Err(invalid(format!("[keys.{role}]: label must not be empty")));
            }
        }
        let all_keys: Vec<&KeyRef> = [&config.keys.root, &config.keys.issuing]
            .into_iter()
            .chain(config.keys.token.iter())
            .chain(config.keys.audit.iter())
            .chain(config.keys.ssh.iter())
            .chain(config.keys.tsa.iter())
            .collect();
        for (i, a) in all_keys.iter().enumerate() {
            for b in &all_keys[i + 1..] {
                if a.label == b.label
                    || (!a.id.is_empty() && a.id == b.id)
                    || (a.handle.is_some() && a.handle == b.handle)
                {
                    return Err(invalid(
                        "[keys]: every key needs its own label, id and handle".into(),
                    ));
                }
            }
        }
        config.revocation.crl_secs().map_err(invalid)?;
        config.revocation.ocsp_secs().map_err(invalid)?;
        config.audit.interval_secs().map_err(invalid)?;
        for (name, subject) in [
            ("root_subject", &config.ca.root_subject),
            ("issuing_subject", &config.ca.issuing_subject),
        ] {
            subject
                .to_name()
                .map_err(|e| invalid(format!("[ca].{name}: {e}")))?;
        }
        if config.ca.root_validity_days == 0 || config.ca.issuing_validity_days == 0 {
            return Err(invalid("[ca]: validity days must be at least 1".into()));
        }
        Ok(config)
    }

    /// The first setting naming a backend or store this build leaves out,
    /// and the Cargo feature that builds it in.
    fn not_built(&self) -> Option<(String, Feature)> {
        let backend = ("[backend]", self.backend.feature());
        let store = self.store.as_ref().map(|s| ("[store]", s.feature()));
        std::iter::once(backend)
            .chain(store)
            .find(|(_, feature)| !feature.is_built())
            .map(|(section, feature)| (format!("{section} type = \"{}\"", feature.name()), feature))
    }
}

/// Resolves the PKCS#11 module and PIN file against the configuration's
/// directory and checks the token is named.
#[cfg(feature = "pkcs11")]
fn resolve_pkcs11(p: &mut Pkcs11Config, base: &Path) -> Result<(), String> {
    if p.module.is_relative() && p.module.components().count() > 1 {
        p.module = clean(&base.join(&p.module));
    }
    p.user_pin = match p.user_pin.clone().relative_to(base) {
        SecretRef::File(f) => SecretRef::File(clean(&f)),
        other => other,
    };
    p.token().map_err(|e| format!("[backend]: {e}"))?;
    Ok(())
}

/// Resolves the TPM auth files against the configuration's directory,
/// checks the TCTI and the CA keys' persistent handles, and names the
/// handles for `keys list`.
#[cfg(feature = "tpm")]
fn resolve_tpm(t: &mut TpmConfig, keys: &KeysConfig, base: &Path) -> Result<(), String> {
    let relative = |s: Option<SecretRef>| {
        s.map(|s| match s.relative_to(base) {
            SecretRef::File(f) => SecretRef::File(clean(&f)),
            other => other,
        })
    };
    t.owner_auth = relative(t.owner_auth.take());
    t.key_auth = relative(t.key_auth.take());
    if t.tcti.trim().is_empty() {
        return Err(
            "[backend] tcti must name the TPM, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`".into(),
        );
    }
    let mut handles = Vec::new();
    for (role, key) in [("root", &keys.root), ("issuing", &keys.issuing)] {
        let handle = crate::keys::tpm::persistent_handle(key)
            .map_err(|e| format!("[keys.{role}] handle: {}", config_message(&e)))?;
        if handles.contains(&handle) {
            return Err(format!(
                "[keys]: the root and issuing keys need different handles ({handle:#010x} twice)"
            ));
        }
        handles.push(handle);
        t.key_names.insert(handle, key.label.clone());
    }
    Ok(())
}

/// The message of a configuration error, without the generic prefix.
#[cfg(feature = "tpm")]
fn config_message(e: &KeyError) -> String {
    match e {
        KeyError::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Removes `.` and resolves `..` lexically (`hsm-config/../var` → `var`),
/// so paths read back the way people write them.
fn clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Describes a TOML error by section, key, line and column, without
/// quoting the offending line: the value there may be a pasted secret.
fn locate(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_owned();
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty());
    // A table-level error (serde buffers internally tagged tables and
    // loses the key's position) points at the table header itself.
    let section = std::iter::once(line.trim())
        .filter(|l| l.starts_with('['))
        .chain(
            before
                .lines()
                .rev()
                .map(str::trim)
                .filter(|l| l.starts_with('[')),
        )
        .next()
        .unwrap_or("");
    let mut place = format!("line {line_no}, column {column}");
    match (section, key) {
        ("", Some(k)) => place.push_str(&format!(" ({k})")),
        (s, Some(k)) => place.push_str(&format!(" ({s} {k})")),
        ("", None) => {}
        (s, None) => place.push_str(&format!(" ({s})")),
    }
    format!("{place}: {}", e.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[backend]
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "lockstep"
user_pin = "file:pin.txt"

[keys.root]
label = "lockstep-root"
id = "01"

[keys.issuing]
label = "lockstep-issuing"
id = "02"

[ca]
dir = "ca"
"#;

    #[cfg(feature = "pkcs11")]
    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = Config::parse(GOOD, Path::new("/etc/lockstep/lockstep.toml")).unwrap();
        assert_eq!(c.ca.dir, Path::new("/etc/lockstep/ca"));
        let BackendConfig::Pkcs11(p) = &c.backend else {
            panic!("not pkcs11")
        };
        assert_eq!(p.user_pin.to_string(), "file:/etc/lockstep/pin.txt");
        assert_eq!(c.ca.root_validity_days, 3650);
        let c = Config::parse(
            &GOOD.replace("dir = \"ca\"", "dir = \"../var/ca\""),
            Path::new("hsm-config/x.toml"),
        )
        .unwrap();
        assert_eq!(c.ca.dir, Path::new("var/ca"));
    }

    #[cfg(feature = "pkcs11")]
    #[test]
    fn errors_name_the_place() {
        let inline_pin = GOOD.replace("file:pin.txt", "123456");
        let err = Config::parse(&inline_pin, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml") && err.contains("[backend]"), "{err}");
        assert!(err.contains("must be given by reference"), "{err}");
        assert!(!err.contains("123456"), "secret echoed: {err}");

        let unknown = GOOD.replace("[ca]", "[ca]\nfoo = 1");
        let err = Config::parse(&unknown, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("foo"), "{err}");

        let no_token = GOOD.replace("token_label = \"lockstep\"", "");
        let err = Config::parse(&no_token, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[backend]") && err.contains("token_label"),
            "{err}"
        );

        let same = GOOD.replace("label = \"lockstep-issuing\"", "label = \"lockstep-root\"");
        let err = Config::parse(&same, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[keys]"), "{err}");

        let bad_cn = format!("{GOOD}root_subject = {{ common_name = \"\" }}\n");
        let err = Config::parse(&bad_cn, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("root_subject"), "{err}");
    }

    const TPM: &str = r#"
[backend]
type = "tpm"
tcti = "device:/dev/tpmrm0"
key_auth = "file:key.auth"

[keys.root]
label = "lockstep-root"
handle = 0x81000010

[keys.issuing]
label = "lockstep-issuing"
handle = 0x81000011

[ca]
dir = "ca"
"#;

    #[cfg(feature = "tpm")]
    #[test]
    fn tpm_backend_reads_handles_and_auth_references() {
        let c = Config::parse(TPM, Path::new("/etc/lockstep/lockstep.toml")).unwrap();
        let BackendConfig::Tpm(t) = &c.backend else {
            panic!("not tpm")
        };
        assert_eq!(t.tcti, "device:/dev/tpmrm0");
        assert!(t.owner_auth.is_none());
        assert_eq!(
            t.key_auth.as_ref().unwrap().to_string(),
            "file:/etc/lockstep/key.auth"
        );
        assert_eq!(c.keys.root.handle, Some(0x8100_0010));
        assert_eq!(
            t.key_names.get(&0x8100_0011).map(String::as_str),
            Some("lockstep-issuing")
        );
    }

    #[cfg(feature = "tpm")]
    #[test]
    fn tpm_handles_must_be_present_persistent_and_distinct() {
        let missing = TPM.replace("handle = 0x81000010", "");
        let err = Config::parse(&missing, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[keys.root]") && err.contains("needs `handle`"),
            "{err}"
        );
        let transient = TPM.replace("0x81000011", "0x80000001");
        let err = Config::parse(&transient, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[keys.issuing]") && err.contains("0x80000001"),
            "{err}"
        );
        let same = TPM.replace("0x81000011", "0x81000010");
        let err = Config::parse(&same, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("different handles"), "{err}");
        let inline = TPM.replace("file:key.auth", "hunter2");
        let err = Config::parse(&inline, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("by reference") && !err.contains("hunter2"),
            "{err}"
        );
    }

    /// The examples in hsm-config/, each with the Cargo feature of its key
    /// backend.
    const EXAMPLES: [(&str, Feature); 4] = [
        ("softhsm.toml", Feature::Pkcs11),
        ("pkcs11-hsm.toml", Feature::Pkcs11),
        ("swtpm.toml", Feature::Tpm),
        ("tpm-device.toml", Feature::Tpm),
    ];

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("hsm-config")
            .join(name)
    }

    /// Each example parses where its backend is built, and is refused with
    /// `feature_not_built` naming the feature where it is not (the reduced
    /// build of scripts/test runs the second branch).
    #[test]
    fn example_configurations_parse_or_name_the_feature_they_need() {
        for (name, feature) in EXAMPLES {
            match Config::load(&example(name)) {
                Ok(c) => {
                    assert!(
                        feature.is_built(),
                        "{name} parsed without `{}`",
                        feature.name()
                    );
                    assert_eq!(c.backend.feature(), feature, "{name}");
                    let store = c.store.as_ref().and_then(StoreConfig::sqlite_path);
                    assert!(
                        store.is_some_and(|p| p.extension().is_some_and(|e| e == "db")),
                        "{name}: {store:?}"
                    );
                }
                Err(e) => {
                    assert!(!feature.is_built(), "{name}: {e}");
                    let text = e.to_string();
                    // The code the CLI prints with the error.
                    assert_eq!(
                        crate::Error::from(e).code(),
                        "feature_not_built",
                        "{name}: {text}"
                    );
                    assert!(
                        text.contains(&format!("[backend] type = \"{}\"", feature.name()))
                            && text.contains(&format!("--features {}", feature.name())),
                        "{name}: {text}"
                    );
                }
            }
        }
    }

    #[cfg(feature = "tpm")]
    #[test]
    fn example_tpm_configurations_parse() {
        for name in ["swtpm.toml", "tpm-device.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("hsm-config")
                .join(name);
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(matches!(c.backend, BackendConfig::Tpm(_)), "{name}");
            assert_eq!(c.keys.issuing.handle, Some(0x8100_0011), "{name}");
        }
    }

    /// A configuration with a key backend this build has.
    const BUILT: &str = if cfg!(feature = "pkcs11") { GOOD } else { TPM };

    fn store(section: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!("{BUILT}\n[store]\n{section}\n"),
            Path::new("/etc/lockstep/lockstep.toml"),
        )
    }

    #[test]
    fn store_is_chosen_by_type_and_keeps_its_short_form() {
        for section in [
            "type = \"sqlite\"\npath = \"../var/lockstep.db\"",
            "sqlite = \"../var/lockstep.db\"",
        ] {
            let c = store(section).unwrap_or_else(|e| panic!("{section}: {e}"));
            let store = c.store.expect("a store");
            assert_eq!(store.feature(), Feature::Sqlite);
            assert_eq!(
                store.sqlite_path(),
                Some(Path::new("/etc/var/lockstep.db")),
                "{section}"
            );
        }
        let c = Config::parse(BUILT, Path::new("x.toml")).unwrap();
        assert!(c.store.is_none());
    }

    #[test]
    #[cfg(feature = "postgres")]
    fn a_postgres_store_takes_its_password_by_reference_only() {
        let c = store(
            "type = \"postgres\"\nurl = \"postgres://lockstep@db/lockstep\"\npassword = \"file:db-password\"\nca_file = \"db-ca.pem\"",
        )
        .unwrap();
        let Some(StoreConfig::Postgres(pg)) = c.store else {
            panic!("a postgres store");
        };
        assert_eq!(pg.url, "postgres://lockstep@db/lockstep");
        assert_eq!(
            pg.password,
            Some(SecretRef::File("/etc/lockstep/db-password".into())),
            "relative to the configuration"
        );
        assert_eq!(
            pg.ca_file.as_deref(),
            Some(Path::new("/etc/lockstep/db-ca.pem"))
        );
        let err = store("type = \"postgres\"\nurl = \"postgres://db/x\"\npassword = \"hunter2\"")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("by reference") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn store_errors_name_the_section_and_what_to_write() {
        for (section, wanted) in [
            // Both forms at once: the short one is not a field of the long.
            (
                "type = \"sqlite\"\npath = \"a.db\"\nsqlite = \"b.db\"",
                "unknown field `sqlite`",
            ),
            ("type = \"sqlite\"", "missing field `path`"),
            ("path = \"a.db\"", "missing field `type`"),
            (
                "type = \"etcd\"\npath = \"a.db\"",
                "unknown variant `etcd`, expected `sqlite`",
            ),
            ("sqlite = 7", "invalid type: integer `7`"),
        ] {
            let err = store(section).unwrap_err();
            let text = err.to_string();
            assert_eq!(err.code(), "config_invalid", "{section}: {text}");
            assert!(
                text.contains("[store]") && text.contains(wanted),
                "{section}: {text}"
            );
        }
    }

    #[cfg(not(feature = "sqlite"))]
    #[test]
    fn a_sqlite_store_is_refused_naming_the_feature() {
        let err = store("sqlite = \"a.db\"").unwrap_err();
        let text = err.to_string();
        assert_eq!(err.code(), "feature_not_built", "{text}");
        assert!(
            text.contains("[store] type = \"sqlite\"") && text.contains("--features sqlite"),
            "{text}"
        );
    }
}
