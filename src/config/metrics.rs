//! `[metrics]`: who may read `GET /metrics`.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::secret::SecretRef;

/// `[metrics]`. Without it, `GET /metrics` answers 404 `metrics_disabled`.
/// With `listen`, the metrics are served in plain HTTP on that address of
/// their own, open to whoever reaches it (bind it to loopback or to the
/// scrape network). With `token`, the API listener serves them too, to a
/// caller that sends that bearer token (Prometheus:
/// `authorization: { credentials_file: … }`). Both may be given.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address of the metrics' own plain-HTTP listener.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The bearer token scrapers send to the API listener, by reference
    /// (`env:NAME` or `file:PATH`).
    #[serde(default)]
    pub token: Option<SecretRef>,
}

impl MetricsConfig {
    /// Makes a relative `file:` token path relative to `base`.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        self.token = self.token.take().map(|t| t.relative_to(base));
    }
}
