//! The gateway's configuration file.
//!
//! ```toml
//! [issuer]
//! url = "https://issuer.plant7:8443"
//! ca = "root.pem"                    # the lockstep root: the issuer's TLS and client certificates
//! token = "file:gateway.token"       # the gateway's API token (env:NAME or file:PATH)
//! silence = "35s"                    # the event stream is lost when silent this long
//!                                    # (the issuer's heartbeat is 15 s by default)
//! crl_refresh = "30s"                # how often the issuer's CRL is fetched
//!
//! [tls]                              # the gateway's own server certificate
//! certificate = "gateway.pem"
//! private_key = "file:gateway.key"
//!
//! [spool]
//! dir = "var/gateway"                # connection reports not yet delivered
//!
//! [limits]
//! max_connections = 256              # in all, across routes
//! per_session = 4                    # concurrent connections of one session
//! idle_timeout = "15m"
//!
//! [[route]]
//! name = "plc"
//! listen = "0.0.0.0:15020"
//! target = "10.7.0.20:502"
//! resource = "plc:line1"             # exact
//! per_session = 1                    # optional, overrides [limits]
//! idle_timeout = "5m"                # optional, overrides [limits]
//! offline = "cut"                    # see `Offline`
//!
//! [[route]]
//! name = "hmi"
//! listen = "0.0.0.0:15900"
//! target = "10.7.0.21:5900"
//! resource = "hmi:line1"
//! offline = "crl"                    # carry on while the held CRL is current…
//! grace = "5m"                       # …and this long past its nextUpdate
//!
//! [[route]]
//! name = "plc-read"
//! listen = "0.0.0.0:15021"
//! target = "10.7.0.20:502"
//! resource = "plc:line1:read"
//! offline = "cut"
//! protocol = "modbus-tcp"            # read as Modbus/TCP frames (see `gateway::modbus`)
//! modbus = { allow = ["read-only"], refused = "answer" }   # or "close"
//! ```
//!
//! Relative paths are relative to the file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::carry::Protocol;
use super::modbus::{Allowed, FunctionName, OnRefused};
use crate::error::Error;
use crate::secret::SecretRef;

/// What a route does while the gateway cannot reach the issuer (its event
/// stream lost). Either way a connection ends at its certificate's
/// `notAfter`, and a close the gateway learns of cuts at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offline {
    /// Fail closed: the route's connections are cut (`link_lost`) and new
    /// ones refused until the stream is back. Nobody stays in unobserved;
    /// a flaky link ends support work.
    Cut,
    /// Carry on while the gateway holds the issuing CA's signed CRL and it
    /// is current (now before its `nextUpdate` plus `grace`): admitted
    /// connections continue and new ones are admitted if their serial is
    /// not on it; once it is not current they are cut (`link_lost`) and
    /// new ones refused. Support work survives a short outage, but a
    /// session closed during it ends only when the link returns (the
    /// gateway then catches up on events) or the CRL runs out: for up to
    /// the CRL's validity plus `grace` a closed session's connection may
    /// go on.
    Crl {
        /// How long past the CRL's `nextUpdate` it is still taken as
        /// current.
        grace: Duration,
    },
}

/// `offline` as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OfflineFile {
    Cut,
    Crl,
}

/// The whole file, as parsed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    issuer: IssuerFile,
    tls: TlsFile,
    spool: SpoolFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(rename = "route")]
    routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerFile {
    url: String,
    ca: PathBuf,
    token: SecretRef,
    #[serde(default = "default_silence")]
    silence: String,
    #[serde(default = "default_crl_refresh")]
    crl_refresh: String,
}

fn default_crl_refresh() -> String {
    "30s".into()
}

fn default_silence() -> String {
    "35s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    certificate: PathBuf,
    private_key: SecretRef,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpoolFile {
    dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_per_session")]
    per_session: usize,
    #[serde(default = "default_idle")]
    idle_timeout: String,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            per_session: default_per_session(),
            idle_timeout: default_idle(),
        }
    }
}

fn default_max_connections() -> usize {
    256
}
fn default_per_session() -> usize {
    4
}
fn default_idle() -> String {
    "15m".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    name: String,
    listen: SocketAddr,
    target: String,
    resource: String,
    per_session: Option<usize>,
    idle_timeout: Option<String>,
    offline: OfflineFile,
    grace: Option<String>,
    #[serde(default)]
    protocol: ProtocolFile,
    modbus: Option<ModbusFile>,
}

/// `protocol` as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
enum ProtocolFile {
    #[default]
    #[serde(rename = "tcp")]
    Tcp,
    #[serde(rename = "modbus-tcp")]
    ModbusTcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModbusFile {
    allow: Vec<FunctionName>,
    #[serde(default)]
    refused: OnRefused,
}

/// The gateway's settings, checked.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The issuer's base URL (`https://…`).
    pub issuer_url: String,
    /// The lockstep root (PEM): client certificates must chain to it, and
    /// the issuer's TLS certificate too.
    pub root: PathBuf,
    /// The gateway's API token.
    pub token: SecretRef,
    /// The event stream is taken as lost when silent this long.
    pub silence: Duration,
    /// How often the issuer's CRL is fetched.
    pub crl_refresh: Duration,
    /// The gateway's server certificate chain (PEM).
    pub certificate: PathBuf,
    /// Its private key.
    pub private_key: SecretRef,
    /// Where undelivered connection reports wait.
    pub spool: PathBuf,
    /// At most this many connections at once, across routes.
    pub max_connections: usize,
    /// The routes.
    pub routes: Vec<Route>,
}

/// One listener in front of one target.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name, in logs and reports.
    pub name: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// What it connects to (`host:port`).
    pub target: String,
    /// The lockstep resource whose sessions it admits (exact).
    pub resource: String,
    /// Concurrent connections one session may have on this route.
    pub per_session: usize,
    /// A connection with no byte either way this long is closed.
    pub idle_timeout: Duration,
    /// What happens while the issuer is out of reach.
    pub offline: Offline,
    /// How the carried bytes are read.
    pub protocol: Protocol,
}

fn duration(place: &str, text: &str) -> Result<Duration, Error> {
    humantime::parse_duration(text).map_err(|e| {
        Error::InvalidArgument(format!(
            "{place}: `{text}` is not a duration (`90s`, `15m`): {e}"
        ))
    })
}

impl GatewayConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
    }

    /// Parses a configuration whose relative paths are relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        if !file.issuer.url.starts_with("https://") {
            return Err("[issuer] url must start with https://".into());
        }
        if file.routes.is_empty() {
            return Err("name at least one [[route]]".into());
        }
        if file.limits.max_connections == 0 || file.limits.per_session == 0 {
            return Err("[limits] max_connections and per_session must be at least 1".into());
        }
        let idle = duration("[limits] idle_timeout", &file.limits.idle_timeout)
            .map_err(|e| e.to_string())?;
        let silence =
            duration("[issuer] silence", &file.issuer.silence).map_err(|e| e.to_string())?;
        if silence < Duration::from_secs(1) {
            return Err("[issuer] silence must be at least 1s".into());
        }
        let crl_refresh = duration("[issuer] crl_refresh", &file.issuer.crl_refresh)
            .map_err(|e| e.to_string())?;
        if crl_refresh < Duration::from_secs(1) {
            return Err("[issuer] crl_refresh must be at least 1s".into());
        }
        let mut routes = Vec::new();
        for r in file.routes {
            let place = format!("[[route]] `{}`", r.name);
            if routes.iter().any(|o: &Route| o.name == r.name) {
                return Err(format!("{place} is named twice"));
            }
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(format!("{place}: a name is [A-Za-z0-9-_.]"));
            }
            if r.resource.ends_with('*') {
                return Err(format!(
                    "{place}: resource must be one exact name, not a prefix"
                ));
            }
            crate::sessions::validate_resource(&r.resource)
                .map_err(|e| format!("{place}: resource: {e}"))?;
            if r.per_session == Some(0) {
                return Err(format!("{place}: per_session must be at least 1"));
            }
            let idle_timeout = match &r.idle_timeout {
                Some(t) => {
                    duration(&format!("{place} idle_timeout"), t).map_err(|e| e.to_string())?
                }
                None => idle,
            };
            let offline = match (r.offline, &r.grace) {
                (OfflineFile::Cut, None) => Offline::Cut,
                (OfflineFile::Cut, Some(_)) => {
                    return Err(format!("{place}: grace applies only to offline = \"crl\""));
                }
                (OfflineFile::Crl, grace) => Offline::Crl {
                    grace: match grace {
                        Some(g) => {
                            duration(&format!("{place} grace"), g).map_err(|e| e.to_string())?
                        }
                        None => Duration::ZERO,
                    },
                },
            };
            let protocol = match (r.protocol, r.modbus) {
                (ProtocolFile::Tcp, None) => Protocol::Opaque,
                (ProtocolFile::Tcp, Some(_)) => {
                    return Err(format!(
                        "{place}: modbus rules need protocol = \"modbus-tcp\""
                    ));
                }
                (ProtocolFile::ModbusTcp, None) => {
                    return Err(format!(
                        "{place}: protocol = \"modbus-tcp\" needs modbus = {{ allow = [...] }} (e.g. [\"read-only\"])"
                    ));
                }
                (ProtocolFile::ModbusTcp, Some(m)) => Protocol::Modbus {
                    allowed: Allowed::parse(&m.allow)
                        .map_err(|e| format!("{place}: modbus allow: {e}"))?,
                    on_refused: m.refused,
                },
            };
            routes.push(Route {
                name: r.name,
                listen: r.listen,
                target: r.target,
                resource: r.resource,
                per_session: r.per_session.unwrap_or(file.limits.per_session),
                idle_timeout,
                offline,
                protocol,
            });
        }
        let path = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        Ok(Self {
            issuer_url: file.issuer.url.trim_end_matches('/').to_owned(),
            root: path(file.issuer.ca),
            token: file.issuer.token.relative_to(base),
            silence,
            crl_refresh,
            certificate: path(file.tls.certificate),
            private_key: file.tls.private_key.relative_to(base),
            spool: path(file.spool.dir),
            max_connections: file.limits.max_connections,
            routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[issuer]
url = "https://127.0.0.1:8443/"
ca = "root.pem"
token = "file:gw.token"
[tls]
certificate = "gw.pem"
private_key = "file:gw.key"
[spool]
dir = "spool"
[limits]
per_session = 2
[[route]]
name = "plc"
listen = "127.0.0.1:15020"
target = "127.0.0.1:5020"
resource = "plc:line1"
offline = "cut"
[[route]]
name = "hmi"
listen = "127.0.0.1:15900"
target = "127.0.0.1:5900"
resource = "hmi:line1"
offline = "crl"
grace = "2m"
idle_timeout = "30s"
[[route]]
name = "plc-read"
listen = "127.0.0.1:15021"
target = "127.0.0.1:5020"
resource = "plc:line1:read"
offline = "cut"
protocol = "modbus-tcp"
modbus = { allow = ["read-only", 23], refused = "close" }
"#;

    #[test]
    fn a_good_file_is_read_with_defaults_and_overrides() {
        let c = GatewayConfig::parse(GOOD, Path::new("/etc/lockstep")).unwrap();
        assert_eq!(c.issuer_url, "https://127.0.0.1:8443");
        assert_eq!(c.root, Path::new("/etc/lockstep/root.pem"));
        assert_eq!(c.max_connections, 256);
        assert_eq!(c.routes[0].per_session, 2);
        assert_eq!(c.routes[0].idle_timeout, Duration::from_secs(900));
        assert_eq!(c.routes[1].idle_timeout, Duration::from_secs(30));
        assert_eq!(c.silence, Duration::from_secs(35));
        assert_eq!(c.crl_refresh, Duration::from_secs(30));
        assert_eq!(c.routes[0].offline, Offline::Cut);
        assert_eq!(c.routes[0].protocol, Protocol::Opaque);
        assert_eq!(
            c.routes[2].protocol,
            Protocol::Modbus {
                allowed: Allowed::of(&[1, 2, 3, 4, 23]),
                on_refused: OnRefused::Close,
            }
        );
        assert_eq!(
            c.routes[1].offline,
            Offline::Crl {
                grace: Duration::from_secs(120)
            }
        );
    }

    #[test]
    fn mistakes_are_named() {
        for (spoil, says) in [
            (
                ("offline = \"cut\"", "offline = \"maybe\""),
                "unknown variant",
            ),
            (("plc:line1", "plc:*"), "exact name"),
            (("name = \"hmi\"", "name = \"plc\""), "named twice"),
            (("https://127", "http://127"), "https://"),
            (("per_session = 2", "per_session = 0"), "at least 1"),
            (
                ("offline = \"crl\"", "offline = \"cut\""),
                "only to offline",
            ),
            (("grace = \"2m\"", "grace = \"soon\""), "not a duration"),
            (("protocol = \"modbus-tcp\"\n", ""), "need protocol"),
            (("modbus = {", "x = {"), "unknown field"),
            (("\"read-only\", 23", "\"erase\""), "not a Modbus function"),
            (("\"modbus-tcp\"", "\"s7\""), "unknown variant"),
        ] {
            let text = GOOD.replacen(spoil.0, spoil.1, 1);
            let err = GatewayConfig::parse(&text, Path::new(".")).unwrap_err();
            assert!(err.contains(says), "{spoil:?}: {err}");
        }
    }
}
