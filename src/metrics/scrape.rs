//! What is read at scrape time: sessions by state, break-glass sessions by
//! review state, whether the store and
//! the key backend answer, the current CRL, the event stream's
//! subscribers.

use std::time::Duration;

use super::Metrics;
use crate::service::Service;
use crate::sessions::{ReviewState, State};

/// How long a scrape waits for the store or the key device before it
/// reports it down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets the gauges read at scrape time, then encodes every metric.
pub async fn render(service: &Service) -> String {
    let metrics = service.metrics();
    refresh(metrics, service).await;
    metrics.encode()
}

async fn refresh(metrics: &Metrics, service: &Service) {
    let store = service.store();
    let counts = tokio::time::timeout(PROBE_TIMEOUT, store.session_counts()).await;
    let store_up = match counts {
        Ok(Ok(counts)) => {
            for state in [State::Pending, State::Open, State::Closed] {
                let n = counts
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(0, |(_, n)| *n);
                metrics
                    .sessions
                    .with_label_values(&[state.as_str()])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            true
        }
        _ => false,
    };
    metrics.store_up.set(i64::from(store_up));
    let key_up = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, service.key_ready()).await,
        Ok(Ok(()))
    );
    metrics.key_backend_up.set(i64::from(key_up));
    if store_up
        && let Ok(Ok((der, entries))) =
            tokio::time::timeout(PROBE_TIMEOUT, service.crl_with_entries()).await
    {
        metrics
            .crl_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        metrics
            .crl_bytes
            .set(i64::try_from(der.len()).unwrap_or(i64::MAX));
    }
    metrics
        .subscribers
        .set(i64::try_from(service.events().subscribers()).unwrap_or(i64::MAX));
    if store_up {
        break_glass(metrics, service).await;
        webhook_backlog(metrics, service).await;
    }
}

/// Break-glass sessions by review state: every state is set, so an alert
/// on `overdue` or `unjustified` sees 0 rather than nothing.
async fn break_glass(metrics: &Metrics, service: &Service) {
    let Ok(Ok(counts)) =
        tokio::time::timeout(PROBE_TIMEOUT, service.store().break_glass_counts()).await
    else {
        return;
    };
    for state in ReviewState::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        metrics
            .break_glass
            .with_label_values(&[state.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Per configured endpoint, the committed entries after its cursor (all
/// of them, wanted or not: an upper bound of what it has yet to receive).
async fn webhook_backlog(metrics: &Metrics, service: &Service) {
    let endpoints = metrics.webhook_endpoints();
    if endpoints.is_empty() {
        return;
    }
    let store = service.store();
    let read = async {
        Ok::<_, crate::store::StoreError>((
            store.audit_head().await?,
            store.webhook_cursors().await?,
        ))
    };
    let Ok(Ok((head, cursors))) = tokio::time::timeout(PROBE_TIMEOUT, read).await else {
        return;
    };
    let head = head.map_or(0, |(seq, _)| seq);
    for name in endpoints {
        let position = cursors
            .iter()
            .find(|c| c.endpoint == name)
            .map_or(head, |c| c.position);
        metrics
            .webhook_backlog
            .with_label_values(&[name.as_str()])
            .set(i64::try_from(head.saturating_sub(position)).unwrap_or(i64::MAX));
    }
}
