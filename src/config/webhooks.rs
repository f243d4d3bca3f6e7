//! `[[webhook]]`: endpoints told of committed session events.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::SecretRef;

/// The session events an endpoint may ask for (the audit entry kinds of a
/// session).
pub const WEBHOOK_EVENTS: &[&str] = &[
    "requested",
    "approved",
    "denied",
    "opened",
    "minted",
    "signed",
    "voided",
    "closed",
    "connection",
    "refused",
    "reviewed",
    "review_overdue",
];

/// One `[[webhook]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Its name: lowercase letters, digits and `-` (1 to 40). It keys the
    /// endpoint's cursor in the store, so renaming an endpoint starts it
    /// afresh at the head of the trail.
    pub name: String,
    /// Where events are POSTed: `https://…`, or `http://` to a loopback
    /// address (a receiver on the same host).
    pub url: String,
    /// The event kinds it is sent (`requested` when not given).
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// Only sessions of these resources (exact names, or prefixes ending
    /// in `*`); all when empty.
    #[serde(default)]
    pub resources: Vec<String>,
    /// The signing secret, `whsec_<base64>`, by reference (`env:NAME` or
    /// `file:PATH`).
    pub secret: SecretRef,
    /// A PEM file of the roots the receiver's TLS certificate chains to
    /// (the Mozilla roots when not given).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How long one attempt may take before it counts as failed.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// The longest wait between attempts (they back off from 1 s,
    /// doubling).
    #[serde(default = "default_max_backoff")]
    pub max_backoff: String,
    /// Whether the endpoint is also sent the `requested`, `opened`,
    /// `closed`, `reviewed` and `review_overdue` entries of break-glass
    /// sessions of its resources, whatever `events` says (default true).
    #[serde(default = "yes")]
    pub break_glass: bool,
}

fn yes() -> bool {
    true
}

fn default_events() -> Vec<String> {
    vec!["requested".into()]
}

fn default_timeout() -> String {
    "10s".into()
}

fn default_max_backoff() -> String {
    "5m".into()
}

impl WebhookConfig {
    /// Makes relative paths relative to `base`.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        self.secret = self.secret.clone().relative_to(base);
        if let Some(ca) = &mut self.ca {
            *ca = super::clean(&base.join(&*ca));
        }
    }

    /// [`WebhookConfig::timeout`], checked: 100 ms to 5 minutes.
    pub fn timeout(&self) -> Result<Duration, String> {
        self.duration("timeout", &self.timeout, Duration::from_millis(100))
    }

    /// [`WebhookConfig::max_backoff`], checked: 1 s to 5 minutes.
    pub fn max_backoff(&self) -> Result<Duration, String> {
        self.duration("max_backoff", &self.max_backoff, Duration::from_secs(1))
    }

    fn duration(&self, what: &str, text: &str, least: Duration) -> Result<Duration, String> {
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("[[webhook]] {}: {what} `{text}`: {e}", self.name))?;
        if d < least || d > Duration::from_secs(300) {
            return Err(format!(
                "[[webhook]] {}: {what} must be {} to 5m",
                self.name,
                humantime::format_duration(least)
            ));
        }
        Ok(d)
    }

    /// Checks what can be checked without reading the secret.
    fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 40
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(format!(
                "[[webhook]] name `{}`: use 1 to 40 lowercase letters, digits and `-`",
                self.name
            ));
        }
        check_url(&self.url).map_err(|e| format!("[[webhook]] {}: url: {e}", self.name))?;
        if self.events.is_empty() {
            return Err(format!(
                "[[webhook]] {}: events must not be empty",
                self.name
            ));
        }
        if let Some(bad) = self
            .events
            .iter()
            .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
        {
            return Err(format!(
                "[[webhook]] {}: unknown event `{bad}`; the events are {}",
                self.name,
                WEBHOOK_EVENTS.join(", ")
            ));
        }
        for r in &self.resources {
            crate::policy::ResourceMatch::parse(r)
                .map_err(|e| format!("[[webhook]] {}: resource `{r}`: {e}", self.name))?;
        }
        self.timeout()?;
        self.max_backoff()?;
        Ok(())
    }
}

/// An `https://` URL, or an `http://` one to a loopback address.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = parsed.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err("plain http is allowed to a loopback address only; use https".into())
            }
        }
        other => Err(format!("scheme `{other}`: use https")),
    }
}

/// Checks every endpoint and that their names are distinct.
pub(super) fn check_all(webhooks: &[WebhookConfig]) -> Result<(), String> {
    for (i, w) in webhooks.iter().enumerate() {
        w.check()?;
        if webhooks[..i].iter().any(|o| o.name == w.name) {
            return Err(format!("[[webhook]] name `{}` is used twice", w.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(name: &str, url: &str, events: &[&str]) -> WebhookConfig {
        WebhookConfig {
            name: name.into(),
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            resources: vec!["db:*".into()],
            secret: SecretRef::parse("env:WHSEC").unwrap(),
            ca: None,
            timeout: default_timeout(),
            max_backoff: default_max_backoff(),
            break_glass: true,
        }
    }

    #[test]
    fn endpoints_are_checked_before_anything_is_sent() {
        let ok = webhook("approvers", "https://hooks.example/in", &["requested"]);
        assert_eq!(check_all(std::slice::from_ref(&ok)), Ok(()));
        for (w, says) in [
            (
                webhook("Approvers", "https://h.example/", &["requested"]),
                "lowercase",
            ),
            (
                webhook("a", "http://hooks.example/", &["requested"]),
                "loopback",
            ),
            (
                webhook("a", "ftp://hooks.example/", &["requested"]),
                "use https",
            ),
            (
                webhook("a", "https://h.example/", &["minted_maybe"]),
                "unknown event",
            ),
            (webhook("a", "https://h.example/", &[]), "must not be empty"),
        ] {
            let err = check_all(&[w]).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        for url in [
            "http://127.0.0.1:9/",
            "http://[::1]:9/",
            "http://localhost/",
        ] {
            assert_eq!(
                check_all(&[webhook("a", url, &["closed"])]),
                Ok(()),
                "{url}"
            );
        }
        let err = check_all(&[ok.clone(), ok.clone()]).unwrap_err();
        assert!(err.contains("used twice"), "{err}");
        let mut slow = ok.clone();
        slow.timeout = "10m".into();
        assert!(check_all(&[slow]).unwrap_err().contains("timeout must be"));
        let mut bad = ok;
        bad.resources = vec!["db:*:x*".into()];
        assert!(check_all(&[bad]).unwrap_err().contains("resource"));
    }
}
