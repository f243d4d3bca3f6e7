//! Request input without HTTP: JSON bodies, session ids, hashes and
//! reasons, parsed and checked exactly as the handlers do it. The handlers
//! call these after reading the body; the fuzz targets call them directly.

use axum::Json;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::views::{NewSessionBody, TokenBody};
use crate::policy::ResourceMatch;
use crate::service::NewSession;
use crate::sessions::{Profile, SessionId, is_bidi_control, parse_hash};
use crate::store::SessionCursor;

/// Longest reason accepted with a denial or revocation, in characters.
pub const MAX_REASON: usize = 500;

/// Longest part of a parser's message passed on to the caller, in
/// characters (parser messages may quote the input).
const MAX_DETAIL: usize = 200;

fn detail(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(MAX_DETAIL).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Parses a JSON request body into `T`: `invalid_json` when the bytes are
/// not JSON at all, `invalid_request` when they are JSON but not a JSON
/// object with exactly the fields of `T` (unknown, missing, duplicate or
/// mistyped fields).
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match Json::<T>::from_bytes(bytes) {
        Ok(Json(v)) if bytes.trim_ascii_start().first() == Some(&b'{') => Ok(v),
        Ok(_) => Err(ApiError::new(
            400,
            "invalid_request",
            "the JSON body must be an object",
        )),
        // Whether the text is JSON decides between the two codes (serde_json
        // reports some type errors, like a number where a name is expected,
        // as syntax errors, and a wrong field before trailing garbage).
        Err(e) => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Err(syntax) => Err(ApiError::new(
                400,
                "invalid_json",
                format!(
                    "the body is not valid JSON: {}",
                    detail(&syntax.to_string())
                ),
            )),
            Ok(_) => Err(ApiError::new(
                400,
                "invalid_request",
                format!(
                    "the JSON body does not match the expected fields: {}",
                    detail(&e.body_text())
                ),
            )),
        },
    }
}

/// The body of a token request: empty (or only white space) asks for a
/// token for the resource, unbound; anything else must be a
/// [`TokenBody`] object.
pub fn token_body(bytes: &[u8]) -> Result<TokenBody, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(TokenBody::default())
    } else {
        json(bytes)
    }
}

/// A session id from a URL or query: anything malformed is "not found".
pub fn session_id(text: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(text).map_err(|e| ApiError::new(404, "session_not_found", e.to_string()))
}

/// The `before` of `GET /v1/sessions`: a `next_before` handed out earlier.
pub fn session_cursor(text: &str) -> Result<SessionCursor, ApiError> {
    SessionCursor::parse(text).ok_or_else(|| {
        ApiError::new(
            400,
            "invalid_request",
            "before must be the next_before of an earlier listing",
        )
    })
}

/// Longest event id accepted, in digits (a u64 has at most 20).
const MAX_EVENT_ID_DIGITS: usize = 20;

/// An event id (`Last-Event-ID`, the `after` of `GET /v1/events`): the
/// decimal audit sequence number of an event seen before.
pub fn event_id(text: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::new(
            400,
            "invalid_request",
            "Last-Event-ID must be the id of an event received before: a decimal sequence number",
        )
    };
    if text.is_empty()
        || text.len() > MAX_EVENT_ID_DIGITS
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

/// The `resource` filter of `GET /v1/events`: a resource name, or a prefix
/// followed by `*`, as in the policy.
pub fn resource_pattern(text: &str) -> Result<ResourceMatch, ApiError> {
    ResourceMatch::parse(text).map_err(|m| {
        ApiError::new(
            400,
            "invalid_request",
            format!(
                "resource must be a resource name or a prefix ending in `*`: {}",
                detail(&m)
            ),
        )
    })
}

/// A credential profile by name.
pub fn profile(text: &str) -> Result<Profile, ApiError> {
    Profile::parse(text).ok_or_else(|| {
        ApiError::new(
            400,
            "invalid_request",
            format!(
                "profile `{}` is not one of mtls-client, code-signing, token",
                text.chars().take(40).collect::<String>().escape_debug()
            ),
        )
    })
}

/// The request of `POST /v1/sessions`, its profile resolved. Its syntax is
/// checked by [`NewSession::validate`], which the service calls first.
pub fn new_session(body: NewSessionBody) -> Result<NewSession, ApiError> {
    Ok(NewSession {
        profile: profile(&body.profile)?,
        resource: body.resource,
        task: body.task,
        request_digest: body.request_digest,
        duration_secs: body.duration_secs,
        break_glass: body.break_glass,
    })
}

/// A request hash as approvers send it (`sha256:<64 hex>`).
pub fn request_hash(text: &str) -> Result<[u8; 32], ApiError> {
    parse_hash(text).map_err(|e| ApiError::new(400, "invalid_request", e.to_string()))
}

/// The reason of a denial or revocation: 1 to [`MAX_REASON`] characters,
/// no control or bidirectional formatting characters (it is shown to
/// people, like the task).
pub fn reason(text: Option<String>) -> Result<Option<String>, ApiError> {
    match text {
        None => Ok(None),
        Some(r) => {
            let n = r.chars().count();
            if n == 0 || n > MAX_REASON || r.chars().any(|c| c.is_control() || is_bidi_control(c)) {
                return Err(ApiError::new(
                    400,
                    "invalid_request",
                    format!(
                        "reason must be 1 to {MAX_REASON} characters without control or bidirectional-override characters"
                    ),
                ));
            }
            Ok(Some(r))
        }
    }
}

/// The media type a request's `Content-Type` names, lower-cased,
/// without parameters (empty when there is none).
pub fn media_type(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::views::{RevokeBody, VoteBody};

    #[test]
    fn json_errors_say_whether_the_text_is_json() {
        let code = |body: &str| {
            json::<VoteBody>(body.as_bytes())
                .unwrap_err()
                .code()
                .to_owned()
        };
        for not_json in [
            "",
            "{",
            "{\"request_hash\": }",
            "{} x",
            "\u{feff}{}",
            "[1,]",
        ] {
            assert_eq!(code(not_json), "invalid_json", "{not_json:?}");
        }
        for wrong in [
            "{}",
            "[]",
            "null",
            "{\"request_hash\": 1}",
            "{\"request_hash\": \"a\", \"x\": 1}",
            "{\"request_hash\": \"a\", \"request_hash\": \"b\"}",
        ] {
            assert_eq!(code(wrong), "invalid_request", "{wrong:?}");
        }
        // serde_json calls these syntax errors; they are valid JSON.
        let revoke = json::<RevokeBody>(b"{\"reason\": \"x\", \"reason_code\": 1}");
        assert_eq!(revoke.unwrap_err().code(), "invalid_request");
        // Numbers beyond f64 are not taken for JSON.
        let huge = format!("{{\"request_hash\": {}}}", "9".repeat(400));
        assert_eq!(code(&huge), "invalid_json");
        assert_eq!(code("{\"request_hash\": \"\\ud800\"}"), "invalid_json");
    }

    #[test]
    fn only_objects_are_bodies() {
        assert!(token_body(b"").is_ok());
        assert!(token_body(b" \n").is_ok());
        assert!(token_body(b"{}").is_ok());
        assert_eq!(token_body(b"[]").unwrap_err().code(), "invalid_request");
        assert_eq!(token_body(b"[null]").unwrap_err().code(), "invalid_request");
    }

    #[test]
    fn messages_do_not_echo_long_input() {
        let body = format!(
            "{{\"reason\": \"x\", \"reason_code\": \"{}\"}}",
            "b".repeat(10_000)
        );
        let err = json::<RevokeBody>(body.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert!(err.message().chars().count() < 400, "{}", err.message());
    }

    #[test]
    fn event_ids_are_sequence_numbers() {
        assert_eq!(event_id("0").unwrap(), 0);
        assert_eq!(event_id("18446744073709551615").unwrap(), u64::MAX);
        for bad in [
            "",
            " 1",
            "1 ",
            "+1",
            "-1",
            "0x10",
            "1.5",
            "18446744073709551616",
            "١",
        ] {
            assert_eq!(
                event_id(bad).unwrap_err().code(),
                "invalid_request",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn resource_filters_are_policy_patterns() {
        assert_eq!(
            resource_pattern("db:payroll").unwrap(),
            ResourceMatch::Exact("db:payroll".into())
        );
        assert_eq!(
            resource_pattern("db:*").unwrap(),
            ResourceMatch::Prefix("db:".into())
        );
        assert_eq!(
            resource_pattern("*").unwrap(),
            ResourceMatch::Prefix(String::new())
        );
        for bad in ["", "db:*x", "d?b", "a\nb", "*db"] {
            assert_eq!(
                resource_pattern(bad).unwrap_err().code(),
                "invalid_request",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reasons_are_plain_text() {
        assert!(reason(Some("rotated the key".into())).is_ok());
        for bad in ["", "a\nb", "a\u{0}", "fine \u{202E}enif", "x\u{61C}"] {
            assert!(reason(Some(bad.into())).is_err(), "{bad:?}");
        }
        assert!(reason(Some("r".repeat(MAX_REASON + 1))).is_err());
    }
}
