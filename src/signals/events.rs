//! The event types lockstep acts on, and what each means for a session.
//!
//! OpenID CAEP 1.0 and RISC 1.0 name their events by URI. lockstep ends
//! the sessions of the event's subject when trust in it changed:
//!
//! | event | acted on when |
//! |---|---|
//! | CAEP `session-revoked` | always: the IdP session the requester signed in with is gone |
//! | CAEP `credential-change` | always: a password, key or token of the subject changed |
//! | CAEP `device-compliance-change` | `current_status` is `not-compliant` |
//! | CAEP `assurance-level-change` | `change_direction` is `decrease` |
//! | RISC `account-disabled`, `account-purged` | always |
//!
//! Any other event type is received (and recorded) but changes nothing.

use serde_json::Value;

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// The short names of the events that can end sessions, with their URI
/// namespace.
const ACTED_ON: &[(&str, &str)] = &[
    (CAEP, "session-revoked"),
    (CAEP, "credential-change"),
    (CAEP, "device-compliance-change"),
    (CAEP, "assurance-level-change"),
    (RISC, "account-disabled"),
    (RISC, "account-purged"),
];

/// One event of a SET, by its short name (`session-revoked`, …) or, for
/// a type lockstep does not know, its full URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalEvent {
    /// `session-revoked`, …, or the URI of an unknown type.
    pub name: String,
    /// Whether it ends the subject's sessions (see the table above).
    pub ends_sessions: bool,
}

impl SignalEvent {
    /// Reads one `events` member: its type URI and payload.
    pub fn parse(uri: &str, payload: &Value) -> Self {
        let known = ACTED_ON
            .iter()
            .find(|(space, name)| uri.strip_prefix(space) == Some(name));
        match known {
            Some((_, name)) => Self {
                name: (*name).to_owned(),
                ends_sessions: ends_sessions(name, payload),
            },
            None => Self {
                name: uri.to_owned(),
                ends_sessions: false,
            },
        }
    }
}

/// Whether the known event `name` with `payload` ends sessions: always,
/// except the two that say which way things changed.
fn ends_sessions(name: &str, payload: &Value) -> bool {
    let field = |k: &str| payload.get(k).and_then(Value::as_str);
    match name {
        "device-compliance-change" => field("current_status") == Some("not-compliant"),
        "assurance-level-change" => field("change_direction") == Some("decrease"),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(uri: &str, payload: Value) -> SignalEvent {
        SignalEvent::parse(uri, &payload)
    }

    #[test]
    fn the_events_that_end_sessions() {
        let caep = |n: &str| format!("{CAEP}{n}");
        assert!(parse(&caep("session-revoked"), json!({})).ends_sessions);
        assert!(parse(&caep("credential-change"), json!({"change_type": "update"})).ends_sessions);
        assert!(parse(&format!("{RISC}account-disabled"), json!({})).ends_sessions);
        let device = caep("device-compliance-change");
        assert!(parse(&device, json!({"current_status": "not-compliant"})).ends_sessions);
        assert!(!parse(&device, json!({"current_status": "compliant"})).ends_sessions);
        let level = caep("assurance-level-change");
        assert!(parse(&level, json!({"change_direction": "decrease"})).ends_sessions);
        assert!(!parse(&level, json!({"change_direction": "increase"})).ends_sessions);
        let unknown = parse("https://example.com/event/other", json!({}));
        assert_eq!(unknown.name, "https://example.com/event/other");
        assert!(!unknown.ends_sessions);
        // A look-alike in another namespace is not the CAEP event.
        assert!(!parse(&format!("{RISC}session-revoked"), json!({})).ends_sessions);
    }
}
