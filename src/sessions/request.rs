//! The request a session is created for: immutable once made, and hashed
//! canonically so that an approval names exactly what was approved.
//!
//! # Canonical request hash
//!
//! `request_hash = SHA-256(encoding)`, where `encoding` is the bytes
//! `lockstep-request-v1` followed by a zero byte, then these fields in order:
//!
//! | field | encoding |
//! |---|---|
//! | session id | string |
//! | tenant (empty if none) | string |
//! | requester identity | string |
//! | resource | string |
//! | task | string |
//! | request digest (empty if none) | string |
//! | duration in seconds | u64, big-endian |
//! | profile (`mtls-client`, `code-signing`) | string |
//! | break-glass requests only: `break-glass` | string |
//!
//! A string is its UTF-8 length as a big-endian u32 followed by its UTF-8
//! bytes. Hex-encoded, prefixed `sha256:`, it is what approvers see and
//! send back.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Profile;
use super::{SessionError, SessionId};

/// Longest resource name accepted.
pub const MAX_RESOURCE_LEN: usize = 200;
/// Longest task text accepted.
pub const MAX_TASK_LEN: usize = 2000;
/// Longest request digest accepted (`sha512:` + 128 hex digits).
pub const MAX_DIGEST_LEN: usize = 160;

/// What a requester asks for. Never changes after the session is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The tenant the resource belongs to, if tenants are used.
    pub tenant: Option<String>,
    /// Who asks (`token:ci`, `oidc:<issuer>:<subject>`).
    pub requester: String,
    /// What for: one resource (`db:payroll`, `release:acme/app`).
    pub resource: String,
    /// Free text: what the requester will do.
    pub task: String,
    /// Optional digest binding the request to an artifact
    /// (`sha256:<hex>`).
    pub request_digest: Option<String>,
    /// How long the session stays open once approved, in seconds.
    pub duration_secs: u32,
    /// Which credential it will mint.
    pub profile: Profile,
    /// Asked as break-glass: under the resource's break-glass rules (no
    /// quorum, short, reviewed afterwards).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

impl Request {
    /// Checks the fields' syntax (lengths, characters, digest format).
    /// Policy limits (maximum duration, allowed profiles) are checked by
    /// the session's rules.
    pub fn validate(&self) -> Result<(), SessionError> {
        validate_fields(
            &self.resource,
            &self.task,
            self.request_digest.as_deref(),
            self.duration_secs,
        )
    }

    /// The canonical hash of this request in session `id` (see the module
    /// documentation for the encoding).
    pub fn hash(&self, id: &SessionId) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"lockstep-request-v1\0");
        let mut field = |s: &str| {
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        };
        field(id.as_str());
        field(self.tenant.as_deref().unwrap_or(""));
        field(&self.requester);
        field(&self.resource);
        field(&self.task);
        field(self.request_digest.as_deref().unwrap_or(""));
        h.update(u64::from(self.duration_secs).to_be_bytes());
        let mut field = |s: &str| {
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        };
        field(self.profile.as_str());
        if self.break_glass {
            field("break-glass");
        }
        h.finalize().into()
    }
}

/// Checks the syntax of what a requester sends: the resource name, the
/// task text, the optional digest and a duration of at least one second.
/// Nothing here depends on policy, so it is checked before policy is asked.
pub fn validate_fields(
    resource: &str,
    task: &str,
    request_digest: Option<&str>,
    duration_secs: u32,
) -> Result<(), SessionError> {
    validate_resource(resource)?;
    let task_chars = task.chars().count();
    if task_chars == 0 || task_chars > MAX_TASK_LEN {
        return Err(SessionError::InvalidRequest(format!(
            "task must be 1 to {MAX_TASK_LEN} characters"
        )));
    }
    if task
        .chars()
        .any(|c| (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c))
    {
        return Err(SessionError::InvalidRequest(
            "task must not contain control or bidirectional-override characters (newlines and tabs are fine)".into(),
        ));
    }
    if let Some(d) = request_digest {
        validate_digest(d)?;
    }
    if duration_secs == 0 {
        return Err(SessionError::InvalidDuration(
            "duration must be at least one second".into(),
        ));
    }
    Ok(())
}

/// Bidirectional formatting characters (Unicode's `Bidi_Control`: marks,
/// embeddings, overrides and isolates): they make text display in another
/// order than it is stored, so an approver could be shown something else.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Formats a request hash the way approvers see and send it.
pub fn format_hash(hash: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(hash))
}

/// Parses `sha256:<64 hex>` (or bare hex).
pub fn parse_hash(text: &str) -> Result<[u8; 32], SessionError> {
    let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
    let bytes = hex::decode(hex_part).map_err(|_| {
        SessionError::InvalidRequest("request_hash must be `sha256:` and 64 hex digits".into())
    })?;
    bytes.try_into().map_err(|_| {
        SessionError::InvalidRequest("request_hash must be `sha256:` and 64 hex digits".into())
    })
}

/// Resource names: 1 to 200 characters of ASCII letters, digits and
/// `: . _ - / @ +`, no empty, `.` or `..` path segments (so no leading,
/// trailing or doubled `/`).
pub fn validate_resource(resource: &str) -> Result<(), SessionError> {
    let bad = |why: &str| {
        SessionError::InvalidRequest(format!(
            "resource `{}` {why}",
            resource.chars().take(80).collect::<String>().escape_debug()
        ))
    };
    if resource.is_empty() || resource.len() > MAX_RESOURCE_LEN {
        return Err(bad(&format!("must be 1 to {MAX_RESOURCE_LEN} characters")));
    }
    if !resource
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":._-/@+".contains(&b))
    {
        return Err(bad("may contain only letters, digits and : . _ - / @ +"));
    }
    if resource
        .split(['/', ':'])
        .any(|seg| seg == "." || seg == "..")
        || resource.contains("//")
        || resource.starts_with('/')
        || resource.ends_with('/')
    {
        return Err(bad(
            "must not contain `.`/`..` segments or empty path segments",
        ));
    }
    Ok(())
}

/// `algorithm:hex`, with a known algorithm and the right length.
fn validate_digest(d: &str) -> Result<(), SessionError> {
    let bad = || {
        SessionError::InvalidRequest(
            "request_digest must be `sha256:<64 hex>`, `sha384:<96 hex>` or `sha512:<128 hex>`"
                .into(),
        )
    };
    if d.len() > MAX_DIGEST_LEN {
        return Err(bad());
    }
    let (alg, hex_part) = d.split_once(':').ok_or_else(bad)?;
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    if hex_part.len() != want || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            tenant: None,
            requester: "token:ci".into(),
            resource: "release:acme/app".into(),
            task: "sign release 1.2.3".into(),
            request_digest: Some(format!("sha256:{}", "ab".repeat(32))),
            duration_secs: 600,
            profile: Profile::CodeSigning,
            break_glass: false,
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let id = SessionId::parse("ses_aaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        let base = request().hash(&id);
        let variants: Vec<Request> = vec![
            Request {
                tenant: Some("acme".into()),
                ..request()
            },
            Request {
                requester: "token:cj".into(),
                ..request()
            },
            Request {
                resource: "release:acme/ap".into(),
                ..request()
            },
            Request {
                task: "sign release 1.2.4".into(),
                ..request()
            },
            Request {
                request_digest: None,
                ..request()
            },
            Request {
                duration_secs: 601,
                ..request()
            },
            Request {
                profile: Profile::MtlsClient,
                ..request()
            },
        ];
        for v in variants {
            assert_ne!(v.hash(&id), base, "{v:?}");
        }
        let other = SessionId::parse("ses_bbbbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
        assert_ne!(request().hash(&other), base);
        // Length prefixes keep field boundaries: moving a character from
        // one field to the next changes the hash.
        let a = Request {
            resource: "ab".into(),
            task: "c".into(),
            ..request()
        };
        let b = Request {
            resource: "a".into(),
            task: "bc".into(),
            ..request()
        };
        assert_ne!(a.hash(&id), b.hash(&id));
    }

    #[test]
    fn hash_text_round_trips() {
        let h = [0x5a; 32];
        assert_eq!(parse_hash(&format_hash(&h)).unwrap(), h);
        assert!(parse_hash("sha256:zz").is_err());
        assert!(parse_hash("sha256:abcd").is_err());
    }

    #[test]
    fn resources_are_checked() {
        for ok in [
            "db:payroll",
            "release:acme/app",
            "ot-gateway:plant-7",
            "api:v1.2@eu+x",
        ] {
            validate_resource(ok).unwrap();
        }
        for bad in [
            "",
            "db payroll",
            "db:\u{7}",
            "release:../etc",
            "release:a/../b",
            "/etc/passwd",
            "a//b",
            "db:ü",
            "release:./x",
            "release:acme/",
            "db:p\u{430}yroll",
            &"a".repeat(201),
        ] {
            assert!(validate_resource(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_are_checked() {
        request().validate().unwrap();
        let cases = [
            Request {
                task: String::new(),
                ..request()
            },
            Request {
                task: "x".repeat(2001),
                ..request()
            },
            Request {
                task: "a\u{1b}[31mred".into(),
                ..request()
            },
            Request {
                request_digest: Some("md5:abc".into()),
                ..request()
            },
            Request {
                request_digest: Some("sha256:abc".into()),
                ..request()
            },
            Request {
                task: "deploy\u{61C} now".into(),
                ..request()
            },
            Request {
                task: "deploy \u{202E}gnp.exe".into(),
                ..request()
            },
            Request {
                duration_secs: 0,
                ..request()
            },
        ];
        for c in cases {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
