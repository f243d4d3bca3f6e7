//! A Security Event Token's claims (RFC 8417), checked after its
//! signature: `jti`, `iat` within the transmitter's window, `events`, and
//! the subject (SSF's `sub_id`, or an event's own `subject`).

use serde_json::{Map, Value};

use super::events::SignalEvent;
use super::{SetError, Signal, Subject};
use crate::clock::Timestamp;

/// The longest `jti` accepted, in characters.
const MAX_JTI_CHARS: usize = 256;
/// At most this many events in one SET.
const MAX_EVENTS: usize = 16;

fn invalid(why: impl Into<String>) -> SetError {
    SetError::InvalidRequest(why.into())
}

/// The checked claims of a verified SET from `issuer`.
pub(super) fn read(
    issuer: &str,
    claims: &Map<String, Value>,
    now: Timestamp,
    max_age_secs: i64,
    leeway_secs: i64,
) -> Result<Signal, SetError> {
    let jti = match claims.get("jti") {
        Some(Value::String(j)) if valid_jti(j) => j.clone(),
        Some(_) => {
            return Err(invalid(format!(
                "`jti` must be 1 to {MAX_JTI_CHARS} printable characters"
            )));
        }
        None => return Err(invalid("the SET has no `jti`")),
    };
    let iat = match claims.get("iat").and_then(Value::as_i64) {
        Some(iat) => iat,
        None => return Err(invalid("the SET has no `iat` (a whole number of seconds)")),
    };
    if iat > now.unix().saturating_add(leeway_secs) {
        return Err(invalid("the SET was issued in the future (`iat`)"));
    }
    if now.unix().saturating_sub(iat) > max_age_secs.saturating_add(leeway_secs) {
        return Err(invalid(format!(
            "the SET is older than this transmitter's max_age ({max_age_secs}s): send a fresh one"
        )));
    }
    if claims.contains_key("exp") {
        // RFC 8417 §2.2: SETs are not access tokens; `exp` is not for them.
        return Err(invalid("a SET must not carry `exp` (RFC 8417)"));
    }
    let events = match claims.get("events") {
        Some(Value::Object(e)) if !e.is_empty() && e.len() <= MAX_EVENTS => e,
        _ => {
            return Err(invalid(format!(
                "`events` must be an object of 1 to {MAX_EVENTS} event types"
            )));
        }
    };
    let subject = match claims.get("sub_id") {
        Some(s) => Subject::parse(s)?,
        None => event_subject(events)?,
    };
    Ok(Signal {
        issuer: issuer.to_owned(),
        jti,
        iat: Timestamp::from_unix(iat),
        events: events
            .iter()
            .map(|(uri, payload)| SignalEvent::parse(uri, payload))
            .collect(),
        subject,
        approvers: false,
    })
}

fn valid_jti(jti: &str) -> bool {
    let n = jti.chars().count();
    (1..=MAX_JTI_CHARS).contains(&n) && !jti.chars().any(char::is_control)
}

/// The subject of events without `sub_id` (CAEP before SSF 1.0): the one
/// `subject` all of them name.
fn event_subject(events: &Map<String, Value>) -> Result<Subject, SetError> {
    let mut found: Option<&Value> = None;
    for payload in events.values() {
        match (payload.get("subject"), found) {
            (None, _) => {}
            (Some(s), None) => found = Some(s),
            (Some(s), Some(f)) if s == f => {}
            (Some(_), Some(_)) => {
                return Err(invalid("the SET's events name different subjects"));
            }
        }
    }
    match found {
        Some(s) => Subject::parse(s),
        None => Err(invalid(
            "the SET names no subject (`sub_id`, or `subject` in its event)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_900_000_000;

    fn claims(extra: Value) -> Map<String, Value> {
        let mut c = json!({
            "iss": "https://idp.example",
            "aud": "https://lockstep.example",
            "jti": "set-1",
            "iat": NOW - 10,
            "sub_id": {"format": "iss_sub", "iss": "https://idp.example", "sub": "alice"},
            "events": {
                "https://schemas.openid.net/secevent/caep/event-type/session-revoked": {
                    "event_timestamp": NOW - 11
                }
            }
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c.as_object().unwrap().clone()
    }

    fn check(extra: Value) -> Result<Signal, String> {
        read(
            "https://idp.example",
            &claims(extra),
            Timestamp::from_unix(NOW),
            3600,
            60,
        )
        .map_err(|e| e.description().to_owned())
    }

    #[test]
    fn a_set_reads_as_its_subject_and_events() {
        let s = check(json!({})).unwrap();
        assert_eq!(s.jti, "set-1");
        assert_eq!(
            s.subject,
            Subject::IssSub {
                iss: "https://idp.example".into(),
                sub: "alice".into()
            }
        );
        assert_eq!(s.events[0].name, "session-revoked");
        assert!(s.events[0].ends_sessions);
    }

    #[test]
    fn the_subject_may_be_in_the_event() {
        let s = check(json!({"sub_id": null, "events": {
            "https://schemas.openid.net/secevent/risc/event-type/account-disabled": {
                "subject": {"format": "email", "email": "Alice@Example.com"}
            }
        }}))
        .unwrap();
        assert_eq!(s.subject, Subject::Email("alice@example.com".into()));
    }

    #[test]
    fn bad_claims_are_refused_with_what_to_fix() {
        for (extra, says) in [
            (json!({"jti": null}), "no `jti`"),
            (json!({"jti": ""}), "`jti` must be"),
            (json!({"iat": null}), "no `iat`"),
            (json!({"iat": NOW + 600}), "in the future"),
            (json!({"iat": NOW - 7200}), "older than"),
            (json!({"exp": NOW + 60}), "must not carry `exp`"),
            (json!({"events": {}}), "`events` must be"),
            (json!({"events": []}), "`events` must be"),
            (json!({"sub_id": null}), "names no subject"),
            (
                json!({"sub_id": {"format": "phone_number", "phone_number": "+1"}}),
                "not a subject format",
            ),
            (
                json!({"sub_id": {"format": "iss_sub", "iss": "x"}}),
                "`iss` and `sub`",
            ),
        ] {
            let err = check(extra.clone()).unwrap_err();
            assert!(err.contains(says), "{extra}: {err}");
        }
    }
}
