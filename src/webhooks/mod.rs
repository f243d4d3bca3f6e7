//! Webhooks: approvers and operators told of committed session events
//! (`[[webhook]]`), instead of polling.
//!
//! Each endpoint is fed by the committed-event stream from a cursor kept
//! in the store ([`crate::store::webhooks`]): an event is POSTed, signed
//! per the Standard Webhooks specification ([`signature`]), until the
//! receiver answers 2xx, and only then does the cursor move past it. So
//! delivery is at least once (a receiver drops duplicates by
//! `webhook-id`), in commit order (and so in order per session), resumes
//! where it was after a restart, and waits with backoff while a receiver
//! is down or slow. Issuance never waits for it: a delivery only reads
//! the trail. With several replicas on one store, one of them delivers to
//! each endpoint at a time (the cursor's lease).

mod delivery;
pub mod payload;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::WebhookConfig;
use crate::error::Error;
use crate::events::CommittedEvent;
use crate::policy::ResourceMatch;
use crate::service::Service;
use payload::Message;
use signature::Signer;

/// The entries of a break-glass session every endpoint of its resource is
/// sent, whatever kinds it asked for: break-glass is loud.
pub const BREAK_GLASS_NOTICES: &[&str] = &[
    "requested",
    "opened",
    "closed",
    "reviewed",
    "review_overdue",
];

/// One endpoint, ready to deliver: its secret read, its client built.
#[derive(Debug)]
pub struct Endpoint {
    /// Its name in the configuration (and in metrics and status).
    pub name: String,
    url: reqwest::Url,
    events: Vec<String>,
    resources: Vec<ResourceMatch>,
    break_glass: bool,
    signer: Signer,
    client: reqwest::Client,
    timeout: Duration,
    max_backoff: Duration,
}

impl Endpoint {
    /// The endpoint `config` describes, with its secret read now.
    pub fn new(config: &WebhookConfig) -> Result<Self, Error> {
        let bad = |m: String| Error::InvalidArgument(format!("[[webhook]] {}: {m}", config.name));
        let secret = config
            .secret
            .resolve()
            .map_err(|e| bad(format!("secret: {e}")))?;
        let signer =
            Signer::new(&secret).map_err(|e| bad(format!("secret {}: {e}", config.secret)))?;
        let timeout = config.timeout().map_err(Error::InvalidArgument)?;
        let trust = match &config.ca {
            Some(path) => crate::net::Trust::Only(
                CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(format!("ca {}: {e}", path.display())))?,
            ),
            None => crate::net::Trust::PublicRoots,
        };
        Ok(Self {
            name: config.name.clone(),
            url: reqwest::Url::parse(&config.url).map_err(|e| bad(format!("url: {e}")))?,
            events: config.events.clone(),
            break_glass: config.break_glass,
            resources: config
                .resources
                .iter()
                .map(|r| ResourceMatch::parse(r).map_err(|e| bad(format!("resource `{r}`: {e}"))))
                .collect::<Result<_, _>>()?,
            signer,
            client: crate::net::webhook_client(trust, timeout)?,
            timeout,
            max_backoff: config.max_backoff().map_err(Error::InvalidArgument)?,
        })
    }

    /// Whether the endpoint asked for `event`: one of its kinds, or a
    /// break-glass notice (unless it opted out), of a session of one of its
    /// resources.
    fn wants(&self, event: &CommittedEvent) -> bool {
        let Some(session) = &event.session else {
            return false;
        };
        let kind = event.entry.kind.as_str();
        let notice = self.break_glass
            && BREAK_GLASS_NOTICES.contains(&kind)
            && crate::audit::is_break_glass(&event.entry.body);
        (notice || self.events.iter().any(|k| k == kind))
            && (self.resources.is_empty()
                || self.resources.iter().any(|r| r.matches(&session.resource)))
    }

    /// One POST of `message`, signed at `now`; Ok on a 2xx answer.
    async fn attempt(&self, message: &Message, now: crate::clock::Timestamp) -> Result<(), String> {
        let timestamp = now.unix();
        let signature = self.signer.sign(&message.id, timestamp, &message.body);
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(message.body.clone())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered HTTP {}", status.as_u16()))
        }
    }

    fn lease_secs(&self) -> i64 {
        delivery::lease_secs(self.timeout)
    }
}

/// A transport error without the URL (whose query may hold a receiver's
/// token).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut cause = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(c) = cause {
        detail = c.to_string();
        cause = c.source();
    }
    if detail.is_empty() {
        format!("the request {what}")
    } else {
        format!("the request {what}: {detail}")
    }
}

/// The running deliveries, one task per endpoint.
pub struct Webhooks {
    service: Arc<Service>,
    names: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Webhooks {
    /// Starts delivering to every endpoint.
    pub fn start(service: Arc<Service>, endpoints: Vec<Endpoint>) -> Self {
        let names: Vec<String> = endpoints.iter().map(|e| e.name.clone()).collect();
        service.metrics().set_webhook_endpoints(&names);
        let tasks = endpoints
            .into_iter()
            .map(|e| tokio::spawn(delivery::run(service.clone(), Arc::new(e))))
            .collect();
        Self {
            service,
            names,
            tasks,
        }
    }

    /// Stops delivering and gives the cursors back, so another replica (or
    /// this one, restarted) takes them up at once.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        for name in &self.names {
            if let Err(e) = self.service.store().release_webhook(name).await {
                tracing::warn!(endpoint = %name, error = %e, "could not give the webhook cursor back");
            }
        }
    }
}

/// Every `[[webhook]]` of the configuration, ready to deliver.
pub fn endpoints(configs: &[WebhookConfig]) -> Result<Vec<Endpoint>, Error> {
    configs.iter().map(Endpoint::new).collect()
}
