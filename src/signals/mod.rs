//! A Shared Signals receiver: identity providers tell lockstep when trust
//! in a subject changed, and the subject's sessions end.
//!
//! Transmitters (`[[transmitter]]` in the configuration) push Security
//! Event Tokens (RFC 8417) to `POST /v1/signals` as
//! `application/secevent+jwt` (RFC 8935). Each SET is verified before it
//! changes anything: its signature against the transmitter's JWKS (ES256
//! or RS256, by `kid`), `typ` `secevent+jwt`, its `iss` (which picks the
//! transmitter) and `aud`, `iat` within the transmitter's `max_age`, and
//! a `jti` never seen before from that transmitter (a replay is refused).
//! A SET that fails any check is answered 400 with RFC 8935's error code
//! (`invalid_request`, `invalid_key`, `invalid_issuer`,
//! `invalid_audience`) and changes nothing.
//!
//! A verified SET is acknowledged 202 once it is on the record: in one
//! store transaction its `jti` is remembered, every open or pending
//! session of its subject whose event ends sessions ([`events`]) is
//! revoked (`closed_by = lockstep:signal`, the event and `jti` in the
//! note; credentials revoked as on any close; gateways cut connections
//! on the event stream), and a `signal` entry records what came and what
//! it ended. Subjects are matched as the policy matches identities: SSF's
//! `iss_sub` is the OIDC identity `oidc:<iss>:<sub>`; `email` (where the
//! transmitter allows it) matches requesters that asked with a verified
//! `email` claim; with `revoke_approved`, sessions the subject approved
//! end too.

pub mod events;
mod set;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde_json::Value;

use crate::auth::oidc::{Issuer, JwtFault, OidcIssuerConfig, unverified_issuer};
use crate::clock::Timestamp;
use crate::config::signals::{SubjectFormat, TransmitterConfig};
use crate::error::Error;
use crate::sessions::Session;
pub use events::SignalEvent;

/// Who closes the sessions a signal ends.
pub const SIGNAL_ACTOR: &str = "lockstep:signal";

/// A verified SET: who sent it, its id, what happened, to whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// The transmitter (`iss`).
    pub issuer: String,
    /// The SET's id, unique per transmitter.
    pub jti: String,
    /// When the transmitter issued it.
    pub iat: Timestamp,
    /// Its events, in the order of the SET.
    pub events: Vec<SignalEvent>,
    /// Whom they are about.
    pub subject: Subject,
    /// Whether sessions the subject approved end too (the transmitter's
    /// `revoke_approved`).
    pub approvers: bool,
}

/// The subject of a SET, in the formats lockstep matches (RFC 9493).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// `iss_sub`: an OIDC issuer's subject.
    IssSub {
        /// The subject's issuer.
        iss: String,
        /// The subject there.
        sub: String,
    },
    /// `email`, lower-cased.
    Email(String),
}

impl Subject {
    /// Reads a subject identifier; `complex` subjects are read by their
    /// `user` member.
    fn parse(value: &Value) -> Result<Self, SetError> {
        let text = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        match value.get("format").and_then(Value::as_str) {
            Some("iss_sub") => match (text("iss"), text("sub")) {
                (Some(iss), Some(sub)) => Ok(Self::IssSub {
                    iss: iss.to_owned(),
                    sub: sub.to_owned(),
                }),
                _ => Err(SetError::InvalidRequest(
                    "an `iss_sub` subject needs `iss` and `sub`".into(),
                )),
            },
            Some("email") => match text("email") {
                Some(e) => Ok(Self::Email(e.to_lowercase())),
                None => Err(SetError::InvalidRequest(
                    "an `email` subject needs `email`".into(),
                )),
            },
            Some("complex") => match value.get("user") {
                Some(user) => Self::parse(user),
                None => Err(SetError::InvalidRequest(
                    "a `complex` subject needs a `user` lockstep can match".into(),
                )),
            },
            _ => Err(SetError::InvalidRequest(
                "the subject is not a subject format lockstep matches (iss_sub, email)".into(),
            )),
        }
    }

    fn format(&self) -> SubjectFormat {
        match self {
            Self::IssSub { .. } => SubjectFormat::IssSub,
            Self::Email(_) => SubjectFormat::Email,
        }
    }

    /// Whether `identity` (a requester or approver) is this subject: the
    /// OIDC identity `oidc:<iss>:<sub>` of an `iss_sub` subject (an email
    /// is no identity; [`Signal::ends`] matches it against the session).
    fn is(&self, identity: &str) -> bool {
        matches!(self, Self::IssSub { .. }) && identity == self.to_string()
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IssSub { iss, sub } => write!(f, "oidc:{iss}:{sub}"),
            Self::Email(e) => write!(f, "email:{e}"),
        }
    }
}

impl Signal {
    /// The names of the events that end sessions (empty: the SET changes
    /// no session).
    pub fn ending_events(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e.ends_sessions)
            .map(|e| e.name.as_str())
            .collect()
    }

    /// Whether this signal ends `session`: one of its events ends
    /// sessions, and the subject requested it (or approved it, where the
    /// transmitter says so).
    pub fn ends(&self, session: &Session) -> bool {
        if self.ending_events().is_empty() {
            return false;
        }
        let requester = match &self.subject {
            Subject::Email(e) => session
                .requester_email
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(e)),
            s => s.is(&session.request.requester),
        };
        requester || (self.approvers && session.approvals.iter().any(|a| self.subject.is(&a.by)))
    }

    /// The note on the sessions it ends.
    pub fn note(&self) -> String {
        format!(
            "signal {} from {} (jti {})",
            self.ending_events().join(", "),
            self.issuer,
            self.jti
        )
    }
}

/// Why a SET was refused, with RFC 8935's error code (§2.4).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// Malformed, or a claim that does not check (including a replayed
    /// `jti`).
    #[error("{0}")]
    InvalidRequest(String),
    /// No usable key, or the signature does not verify.
    #[error("{0}")]
    InvalidKey(String),
    /// The issuer is not a configured transmitter.
    #[error("{0}")]
    InvalidIssuer(String),
    /// The SET is not for this receiver.
    #[error("{0}")]
    InvalidAudience(String),
    /// The transmitter's keys cannot be had now: try again later.
    #[error("{0}")]
    Unavailable(String),
}

impl SetError {
    /// RFC 8935's `err` value (`temporarily_unavailable` for keys that
    /// cannot be had now, answered 503).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidKey(_) => "invalid_key",
            Self::InvalidIssuer(_) => "invalid_issuer",
            Self::InvalidAudience(_) => "invalid_audience",
            Self::Unavailable(_) => "temporarily_unavailable",
        }
    }

    /// What went wrong, never quoting the SET.
    pub fn description(&self) -> &str {
        match self {
            Self::InvalidRequest(d)
            | Self::InvalidKey(d)
            | Self::InvalidIssuer(d)
            | Self::InvalidAudience(d)
            | Self::Unavailable(d) => d,
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Unavailable(_) => 503,
            _ => 400,
        }
    }
}

impl From<JwtFault> for SetError {
    fn from(f: JwtFault) -> Self {
        let m = f.message().to_owned();
        match f {
            JwtFault::Malformed(_) => Self::InvalidRequest(m),
            JwtFault::Key(_) => Self::InvalidKey(m),
            JwtFault::Issuer => Self::InvalidIssuer(m),
            JwtFault::Audience => Self::InvalidAudience(m),
            JwtFault::Unavailable(_) => Self::Unavailable(m),
        }
    }
}

/// One configured transmitter.
struct Transmitter {
    keys: Issuer,
    subjects: Vec<SubjectFormat>,
    revoke_approved: bool,
    max_age_secs: i64,
}

/// Verifies pushed SETs from the configured transmitters.
pub struct Receiver {
    transmitters: HashMap<String, Transmitter>,
    http: reqwest::Client,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.transmitters.keys().collect();
        names.sort();
        f.debug_struct("Receiver")
            .field("transmitters", &names)
            .finish_non_exhaustive()
    }
}

const SECTION: &str = "[[transmitter]]";

impl Receiver {
    /// The receiver for `configs` (none: no receiver), checked; relative
    /// `file:` JWKS paths resolve against `base_dir`. `http` fetches the
    /// JWKS.
    pub fn new(
        configs: &[TransmitterConfig],
        base_dir: &Path,
        http: reqwest::Client,
    ) -> Result<Option<Self>, Error> {
        if configs.is_empty() {
            return Ok(None);
        }
        let mut transmitters = HashMap::new();
        for c in configs {
            let bad = |m: String| Error::InvalidArgument(format!("{SECTION} `{}`: {m}", c.issuer));
            let keys = Issuer::from_config(
                &OidcIssuerConfig {
                    issuer: c.issuer.clone(),
                    audience: c.audience.clone(),
                    jwks: c.jwks.clone(),
                    jwks_cache: c.jwks_cache.clone(),
                    leeway: c.leeway.clone(),
                },
                base_dir,
                SECTION,
            )
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let transmitter = Transmitter {
                keys,
                subjects: c.subject_formats().map_err(bad)?,
                revoke_approved: c.revoke_approved,
                max_age_secs: c.max_age_secs().map_err(bad)?,
            };
            if transmitters.insert(c.issuer.clone(), transmitter).is_some() {
                return Err(bad("configured twice".into()));
            }
        }
        Ok(Some(Self { transmitters, http }))
    }

    /// Verifies a pushed SET at `now` (everything but its `jti`'s
    /// novelty, which the store decides as it acts on it).
    pub async fn verify(&self, token: &str, now: Timestamp) -> Result<Signal, SetError> {
        let iss = unverified_issuer(token)?;
        let t = self.transmitters.get(&iss).ok_or_else(|| {
            SetError::InvalidIssuer("the SET's issuer is not a configured transmitter".into())
        })?;
        let verified = t.keys.verified(&self.http, token, now).await?;
        let typ = verified.header.typ.as_deref().unwrap_or_default();
        if !typ.eq_ignore_ascii_case("secevent+jwt")
            && !typ.eq_ignore_ascii_case("application/secevent+jwt")
        {
            return Err(SetError::InvalidRequest(
                "the SET's header must say `typ: secevent+jwt` (RFC 8417)".into(),
            ));
        }
        let mut signal = set::read(
            t.keys.name(),
            &verified.claims,
            now,
            t.max_age_secs,
            t.keys.leeway_secs(),
        )?;
        if !t.subjects.contains(&signal.subject.format()) {
            return Err(SetError::InvalidRequest(format!(
                "this transmitter's subjects are not matched by {}: set `subjects` in its {SECTION}",
                signal.subject.format().as_str()
            )));
        }
        signal.approvers = t.revoke_approved;
        Ok(signal)
    }
}
