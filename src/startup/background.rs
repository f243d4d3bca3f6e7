//! The service's duties beside answering requests, on one timer: closing
//! due sessions, recording counted refusals, signing audit checkpoints and
//! renewing the minted server certificate; and, on their own tasks, the
//! metrics' ledger counters and listener.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::tls::MintedIdentity;
use crate::service::Service;

/// The shortest period between rounds, whatever `[server] sweep_interval`
/// says.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How often the server certificate is checked for renewal.
const RENEWAL_CHECK: Duration = Duration::from_secs(60);

/// Runs the background rounds every `interval`, until aborted. Failures
/// are logged and retried next round.
pub async fn run(service: Arc<Service>, interval: Duration, identity: Option<Arc<MintedIdentity>>) {
    let mut tick = tokio::time::interval(interval.max(MIN_INTERVAL));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_renewal_check = Instant::now();
    loop {
        tick.tick().await;
        round(&service).await;
        if let Some(identity) = &identity
            && last_renewal_check.elapsed() > RENEWAL_CHECK
        {
            last_renewal_check = Instant::now();
            renew(&service, identity.clone()).await;
        }
    }
}

/// With `[metrics]` (`served`), starts counting the ledger's entries into
/// the service's metrics (from the trail's head: counters start with the
/// process) and, with `[metrics] listen`, serves them in plain HTTP on its
/// `listener`. Without it nothing follows the event stream for metrics:
/// nobody would read them.
pub async fn metrics(
    service: Arc<Service>,
    served: bool,
    listener: Option<tokio::net::TcpListener>,
) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
    if !served {
        return Ok(None);
    }
    if let Some(listener) = &listener {
        tracing::info!(address = %listener.local_addr()?, "metrics are served in plain HTTP");
    }
    let head = match service.store().audit_head().await {
        Ok(head) => head.map_or(0, |(seq, _)| seq),
        Err(e) => return Err(std::io::Error::other(e.to_string())),
    };
    Ok(Some(tokio::spawn(async move {
        let counting =
            crate::metrics::ledger::follow(service.metrics().clone(), service.events(), head);
        match listener {
            Some(listener) => {
                let app = crate::api::metrics::standalone(service.clone());
                let serving = async {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "the metrics listener failed");
                    }
                };
                tokio::join!(counting, serving);
            }
            None => counting.await,
        }
    })))
}

/// One round: sweep, counted refusals, checkpoint.
async fn round(service: &Service) {
    if let Err(e) = service.sweep().await {
        tracing::warn!(error = %e, "sweeping due sessions failed");
    }
    service.record_counted_refusals().await;
    if let Err(e) = service.checkpoint(false).await {
        tracing::warn!(error = %e, "signing an audit checkpoint failed");
    }
}

/// Renews the server certificate when two thirds of its life have passed
/// (a call into the key device, so off the async threads).
async fn renew(service: &Service, identity: Arc<MintedIdentity>) {
    let now = service.now();
    match tokio::task::spawn_blocking(move || identity.renew_if_due(now)).await {
        Ok(Err(e)) => tracing::warn!(error = %e, "renewing the server certificate failed"),
        Err(e) => tracing::warn!(error = %e, "renewal task failed"),
        Ok(Ok(_)) => {}
    }
}
