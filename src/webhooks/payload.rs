//! What an endpoint receives: a thin description of one committed session
//! event, in the Standard Webhooks shape `{type, timestamp, data}`. It
//! names the session, its resource, requester and request hash, and what
//! to run or open next; it never carries a credential (no certificate,
//! token, key or serial) or the requester's free-text task.

use serde::Serialize;
use serde_json::Value;

use crate::audit::Entry;
use crate::clock::Timestamp;
use crate::sessions::{Event, Profile, ReviewState, Session, State, format_hash};

/// One message, the same at every attempt (only the signature's
/// timestamp changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `webhook-id`: stable across attempts and restarts, so a receiver
    /// can drop a duplicate.
    pub id: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

#[derive(Serialize)]
struct Body<'a> {
    /// `session.<kind>`.
    r#type: String,
    /// When the event was committed.
    timestamp: Timestamp,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    seq: u64,
    event: &'a str,
    session: &'a str,
    resource: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    requester: &'a str,
    request_hash: String,
    profile: &'a str,
    /// The session's state now (it may have moved on since the event).
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    closes_at: Option<Timestamp>,
    /// Break-glass sessions: `true`, and where the review stands.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    break_glass: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    review: Option<&'static str>,
    /// What the event itself says, beyond the session (who voted, why it
    /// closed, which code refused).
    #[serde(skip_serializing_if = "Value::is_null")]
    detail: Value,
    next: Next,
}

/// What whoever is told should run or open next.
#[derive(Serialize)]
struct Next {
    /// A `lockstep` command line, when there is something to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    /// The session in the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

/// The message for `entry` of `session` (as it is now), with links under
/// `public_url`.
pub fn message(entry: &Entry, session: &Session, public_url: Option<&str>) -> Message {
    let event: Option<Event> = serde_json::from_str(&entry.body).ok();
    let id = session.id.as_str();
    let body = Body {
        r#type: format!("session.{}", entry.kind),
        timestamp: Timestamp::from_unix(entry.at),
        data: Data {
            seq: entry.seq,
            event: &entry.kind,
            session: id,
            resource: &session.request.resource,
            tenant: session.request.tenant.as_deref(),
            requester: &session.request.requester,
            request_hash: format_hash(&session.request_hash),
            profile: session.request.profile.as_str(),
            state: session.state.as_str(),
            closes_at: session.closes_at,
            break_glass: session.break_glass.is_some(),
            review: session.review_state().map(|r| r.as_str()),
            detail: event.as_ref().map_or(Value::Null, detail),
            next: Next {
                command: next_command(&entry.kind, session),
                url: public_url.map(|u| format!("{u}/v1/sessions/{id}")),
            },
        },
    };
    Message {
        id: format!(
            "msg_{}_{}",
            entry.seq,
            &entry.hash[..entry.hash.len().min(16)]
        ),
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// The command that moves the session on: approvers approve (or deny) a
/// pending one, the requester takes the credential of an open one.
fn next_command(kind: &str, session: &Session) -> Option<String> {
    let id = session.id.as_str();
    if session
        .review_state()
        .is_some_and(|r| r.unreviewed() && r != ReviewState::Unjustified)
        && kind != "minted"
    {
        // Break-glass: what approvers owe is the after-review.
        return Some(format!(
            "lockstep review {id} --outcome justified|unjustified --note <why>"
        ));
    }
    match (kind, session.state) {
        ("requested" | "approved", State::Pending) => Some(format!("lockstep approve {id}")),
        ("opened", State::Open) => Some(match session.request.profile {
            Profile::MtlsClient => format!("lockstep cert {id}"),
            Profile::CodeSigning => format!("lockstep sign {id} --artifact <file>"),
            Profile::Token => format!("lockstep token {id}"),
            Profile::SshUser => format!("lockstep ssh {id}"),
        }),
        _ => None,
    }
}

/// The event's own facts that are not credential material.
fn detail(event: &Event) -> Value {
    match event {
        Event::Approved { by } => serde_json::json!({ "by": by }),
        Event::Denied { by, .. } => serde_json::json!({ "by": by }),
        Event::Opened { approvers, .. } => serde_json::json!({ "approvers": approvers }),
        Event::Minted {
            kind, handed_out, ..
        } => serde_json::json!({ "kind": kind.as_str(), "handed_out": handed_out }),
        Event::Signed {
            artifact_digest,
            handed_out,
            ..
        } => serde_json::json!({ "artifact_digest": artifact_digest, "handed_out": handed_out }),
        Event::Closed { reason, by, .. } => {
            serde_json::json!({ "reason": reason.as_str(), "by": by })
        }
        Event::Refused {
            caller,
            action,
            code,
        } => {
            serde_json::json!({ "caller": caller, "action": action, "code": code })
        }
        Event::Connection { gateway, .. } => serde_json::json!({ "gateway": gateway }),
        Event::Reviewed { by, outcome, .. } => {
            serde_json::json!({ "by": by, "outcome": outcome.as_str() })
        }
        Event::ReviewOverdue { review_by } => serde_json::json!({ "review_by": review_by }),
        _ => Value::Null,
    }
}
