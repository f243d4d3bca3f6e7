//! `lockstep webhooks status`: where each endpoint's delivery stands, read
//! from the store (the service need not run).

use std::fmt::Write;

use clap::Subcommand;
use serde::Serialize;

use super::Output;
use crate::clock::Timestamp;
use crate::config::{Config, WebhookConfig};
use crate::error::Error;
use crate::store::WebhookCursor;

/// Inspect webhook delivery.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// For each `[[webhook]]`: the last entry delivered or passed over
    /// (of the trail's head), failed attempts in a row, the last error,
    /// when the next attempt is due, and which process delivers.
    Status,
}

/// One endpoint's status.
#[derive(Serialize)]
struct Status {
    endpoint: String,
    /// The URL without its query or user info.
    url: String,
    events: Vec<String>,
    /// Sequence number of the trail's last entry.
    head: u64,
    /// Entries after the cursor (none: never started).
    behind: Option<u64>,
    #[serde(flatten)]
    cursor: Option<WebhookCursor>,
}

/// Runs a `webhooks` subcommand.
pub fn run(config: &Config, cmd: WebhooksCommand, out: Output) -> Result<(), Error> {
    match cmd {
        WebhooksCommand::Status => {
            let store_config = config.store.as_ref().ok_or_else(|| {
                Error::InvalidArgument("the configuration has no [store] section".into())
            })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("tokio runtime", e))?;
            let (head, cursors) = runtime.block_on(async {
                let store = crate::store::open(store_config).await?;
                let head = store.audit_head().await?.map_or(0, |(seq, _)| seq);
                Ok::<_, crate::store::StoreError>((head, store.webhook_cursors().await?))
            })?;
            let statuses: Vec<Status> = config
                .webhooks
                .iter()
                .map(|w| status(w, head, &cursors))
                .collect();
            out.print(&statuses, || text(&statuses));
            Ok(())
        }
    }
}

fn status(w: &WebhookConfig, head: u64, cursors: &[WebhookCursor]) -> Status {
    let cursor = cursors.iter().find(|c| c.endpoint == w.name).cloned();
    Status {
        endpoint: w.name.clone(),
        url: shown_url(&w.url),
        events: w.events.clone(),
        head,
        behind: cursor.as_ref().map(|c| head.saturating_sub(c.position)),
        cursor,
    }
}

/// `url` without user info, query or fragment: those may hold a
/// receiver's credentials.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(invalid)".into(),
    }
}

fn when(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_string())
}

fn text(statuses: &[Status]) -> String {
    let mut s = String::new();
    if statuses.is_empty() {
        s.push_str("no [[webhook]] is configured\n");
    }
    for st in statuses {
        let _ = writeln!(
            s,
            "{}  {}  events: {}",
            st.endpoint,
            st.url,
            st.events.join(",")
        );
        match &st.cursor {
            None => {
                let _ = writeln!(
                    s,
                    "  not started (it begins at the head of the trail, {})",
                    st.head
                );
            }
            Some(c) => {
                let _ = writeln!(
                    s,
                    "  position {} of {} ({} behind), {} delivered, last at {}",
                    c.position,
                    st.head,
                    st.behind.unwrap_or(0),
                    c.delivered,
                    when(c.delivered_at)
                );
                if c.failures > 0 {
                    let _ = writeln!(
                        s,
                        "  failing: {} attempts in a row, next at {}, last error: {}",
                        c.failures,
                        when(c.next_attempt),
                        c.last_error.as_deref().unwrap_or("-")
                    );
                }
                match &c.holder {
                    Some(h) => {
                        let _ = writeln!(
                            s,
                            "  delivered by {h} (lease until {})",
                            when(c.lease_until)
                        );
                    }
                    None => {
                        let _ = writeln!(s, "  no process delivers to it now");
                    }
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::shown_url;

    #[test]
    fn the_shown_url_drops_credentials() {
        assert_eq!(
            shown_url("https://user:pw@hooks.example/in?token=abc#x"),
            "https://hooks.example/in"
        );
    }
}
