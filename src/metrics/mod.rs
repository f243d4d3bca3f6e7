//! Prometheus metrics, served as `GET /metrics` in the classic text format
//! (`text/plain; version=0.0.4`).
//!
//! Three sources, one registry per running service ([`Metrics`]):
//!
//! - the ledger: counters fed by the committed-event stream
//!   ([`ledger::follow`]), so they count what the store committed, whoever
//!   committed it (on a shared store every replica counts every replica's
//!   sessions: aggregate them with `max`, not `sum`);
//! - this process: mint, device-signature and store-commit latencies, the
//!   event stream's subscribers, webhook deliveries;
//! - a reading at scrape time ([`scrape`]): sessions by state, whether the
//!   store and key backend answer, the CRL's entries and size.
//!
//! No label carries an identity, a session id, a serial or a secret. Label
//! values are lockstep's own names (event kinds, close reasons, error
//! codes, credential kinds and profiles, key roles, webhook endpoint
//! names from the configuration); a value that is not a short lowercase
//! name is counted as `other`, and each family holds at most
//! [`MAX_SERIES`] label sets (further ones go to `other` too), so a scrape
//! stays small whatever callers send.

pub mod device;
mod family;
pub mod ledger;
pub mod scrape;

use prometheus::{Encoder, Histogram, HistogramOpts, IntGauge, Opts, Registry, TextEncoder};

pub use family::{CounterFamily, HistogramFamily, MAX_SERIES};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets, seconds: from a SoftHSM2 signature (tens of
/// microseconds) to a slow TPM or a remote database (seconds).
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Every metric of one running service.
pub struct Metrics {
    registry: Registry,
    /// The key backend's kind (`pkcs11`, `tpm`), a label of the mint
    /// latency.
    backend: &'static str,
    /// Committed audit entries by kind (`requested`, `approved`,
    /// `denied`, `opened`, `minted`, `closed`, `refused`, …): the
    /// sessions' transitions and everything else on the record.
    pub entries: CounterFamily,
    /// Sessions closed, by reason.
    pub closed: CounterFamily,
    /// Refused calls by action and error code.
    pub refusals: CounterFamily,
    /// Credentials handed out, by kind and profile.
    pub minted: CounterFamily,
    /// Credentials signed but withheld (the session closed meanwhile), by
    /// kind.
    pub withheld: CounterFamily,
    /// The sequence number of the last committed entry counted.
    pub ledger_position: IntGauge,
    /// Time from a mint request's checks to its credential, by backend
    /// and kind ([`Metrics::minted_in`]).
    mint_seconds: HistogramFamily,
    /// Time the key device takes to sign, by backend and key role.
    pub device_seconds: HistogramFamily,
    /// Sessions stored, by state (read at scrape time).
    pub sessions: prometheus::IntGaugeVec,
    /// Break-glass sessions stored, by review state (read at scrape time).
    pub break_glass: prometheus::IntGaugeVec,
    /// 1 when the store answers (read at scrape time).
    pub store_up: IntGauge,
    /// 1 when the key backend answers and the issuing key signs.
    pub key_backend_up: IntGauge,
    /// Entries of the current CRL.
    pub crl_entries: IntGauge,
    /// Size of the current CRL, bytes (DER).
    pub crl_bytes: IntGauge,
    /// Live subscribers of the committed-event stream.
    pub subscribers: IntGauge,
    /// Webhook deliveries by endpoint and outcome (`delivered`, `failed`).
    pub webhook_deliveries: CounterFamily,
    /// Events a webhook endpoint has yet to receive.
    pub webhook_backlog: prometheus::IntGaugeVec,
    /// The configured webhook endpoints, whose backlog a scrape reads.
    webhook_endpoints: std::sync::Mutex<Vec<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every metric registered and `lockstep_build_info`
    /// set for this build (its version and Cargo features), for a service
    /// whose keys are on a `backend` (`pkcs11`, `tpm`).
    pub fn new(backend: &'static str, features: &[&str]) -> Self {
        let registry =
            Registry::new_custom(Some("lockstep".into()), None).unwrap_or_else(|_| Registry::new());
        let r = &registry;
        let metrics = Self {
            backend,
            entries: CounterFamily::new(
                r,
                "ledger_entries_total",
                "Committed audit entries (session transitions, mints, refusals, ...), by kind.",
                &["kind"],
            ),
            closed: CounterFamily::new(
                r,
                "sessions_closed_total",
                "Sessions closed, by reason.",
                &["reason"],
            ),
            refusals: CounterFamily::new(
                r,
                "refusals_total",
                "Refused calls, by action and error code (action `request`: a call without a valid credential).",
                &["action", "code"],
            ),
            minted: CounterFamily::new(
                r,
                "credentials_minted_total",
                "Credentials handed out, by kind and profile.",
                &["kind", "profile"],
            ),
            withheld: CounterFamily::new(
                r,
                "credentials_withheld_total",
                "Credentials signed but withheld because their session closed while they were signed, by kind.",
                &["kind"],
            ),
            ledger_position: gauge(
                r,
                "ledger_position",
                "Sequence number of the last committed audit entry counted.",
            ),
            mint_seconds: HistogramFamily::new(
                r,
                "mint_duration_seconds",
                "Time to mint a credential (checks, slot, device signature, record), by key backend and kind.",
                &["backend", "kind"],
                &LATENCY_BUCKETS,
            ),
            device_seconds: HistogramFamily::new(
                r,
                "device_signature_duration_seconds",
                "Time the key device takes to sign, by backend and key role.",
                &["backend", "key"],
                &LATENCY_BUCKETS,
            ),
            sessions: gauge_vec(r, "sessions", "Sessions stored, by state.", &["state"]),
            break_glass: gauge_vec(
                r,
                "break_glass_sessions",
                "Break-glass sessions stored, by review state (overdue and unjustified ones are flagged).",
                &["review"],
            ),
            store_up: gauge(r, "store_up", "1 when the store answers, 0 when not."),
            key_backend_up: gauge(
                r,
                "key_backend_up",
                "1 when the key backend answers and the issuing key signs, 0 when not.",
            ),
            crl_entries: gauge(r, "crl_entries", "Entries of the current CRL."),
            crl_bytes: gauge(r, "crl_bytes", "Size of the current CRL (DER), bytes."),
            subscribers: gauge(
                r,
                "event_subscribers",
                "Live subscribers of the committed-event stream (GET /v1/events, gateways, webhooks, metrics).",
            ),
            webhook_deliveries: CounterFamily::new(
                r,
                "webhook_deliveries_total",
                "Webhook delivery attempts, by endpoint and outcome (delivered, failed).",
                &["endpoint", "outcome"],
            ),
            webhook_backlog: gauge_vec(
                r,
                "webhook_backlog",
                "Committed events a webhook endpoint has yet to receive.",
                &["endpoint"],
            ),
            webhook_endpoints: std::sync::Mutex::new(Vec::new()),
            registry,
        };
        let info = gauge_vec(
            &metrics.registry,
            "build_info",
            "lockstep's version and Cargo features; always 1.",
            &["version", "features"],
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), &features.join(",")])
            .set(1);
        metrics
    }

    /// Records that a credential of `kind` took `seconds` to mint.
    pub fn minted_in(&self, kind: &str, seconds: f64) {
        self.mint_seconds.observe(&[self.backend, kind], seconds);
    }

    /// Names the webhook endpoints being delivered to.
    pub fn set_webhook_endpoints(&self, names: &[String]) {
        *self
            .webhook_endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = names.to_vec();
    }

    /// The webhook endpoints being delivered to.
    pub fn webhook_endpoints(&self) -> Vec<String> {
        self.webhook_endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Registers a histogram made elsewhere (the store's commit latency).
    pub fn register_histogram(&self, histogram: Histogram) {
        if let Err(e) = self.registry.register(Box::new(histogram)) {
            tracing::warn!(error = %e, "a histogram could not be registered");
        }
    }

    /// Every metric, in the classic Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A histogram of seconds with lockstep's latency buckets, for a caller
/// that keeps it (`lockstep_` is added when it is registered).
pub fn latency_histogram(name: &str, help: &str, label: (&str, &str)) -> Histogram {
    let opts = HistogramOpts::new(name, help)
        .const_label(label.0, label.1)
        .buckets(LATENCY_BUCKETS.to_vec());
    Histogram::with_opts(opts).unwrap_or_else(|_| {
        Histogram::with_opts(HistogramOpts::new("unnamed_seconds", "unnamed"))
            .unwrap_or_else(|_| unreachable!("a fixed histogram is valid"))
    })
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::with_opts(Opts::new(name, help))
        .unwrap_or_else(|_| unreachable!("metric names here are valid"));
    register(registry, gauge.clone());
    gauge
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::IntGaugeVec {
    let vec = prometheus::IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable!("metric names here are valid"));
    register(registry, vec.clone());
    vec
}

fn register<C: prometheus::core::Collector + 'static>(registry: &Registry, collector: C) {
    if let Err(e) = registry.register(Box::new(collector)) {
        tracing::warn!(error = %e, "a metric could not be registered");
    }
}

#[cfg(test)]
mod tests;
