//! `[[transmitter]]`: the Shared Signals transmitters lockstep receives
//! Security Event Tokens from (see [`crate::signals`]).
//!
//! ```toml
//! [[transmitter]]
//! issuer = "https://idp.example"            # the SETs' `iss`
//! jwks = "https://idp.example/jwks.json"    # or file:PATH; http:// only to loopback
//! audience = "https://lockstep.example"     # the `aud` its SETs name
//! subjects = ["iss_sub", "email"]           # default ["iss_sub"]
//! revoke_approved = false                   # also end sessions the subject approved
//! max_age = "1h"                            # oldest `iat` accepted (at most 24h)
//! # jwks_cache = "5m", leeway = "60s"       # as for [[auth.oidc]]
//! ```

use serde::Deserialize;

/// The longest `max_age` accepted: a day. `jti`s are remembered this long
/// (plus the leeway), so no SET can be replayed after it is forgotten.
pub const MAX_SIGNAL_AGE_SECS: i64 = 86_400;

/// One transmitter.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransmitterConfig {
    /// The transmitter's issuer: its SETs' exact `iss`.
    pub issuer: String,
    /// Where its keys are, as for `[[auth.oidc]] jwks`.
    pub jwks: String,
    /// The `aud` its SETs must name.
    pub audience: String,
    /// The subject formats matched: `iss_sub` and/or `email`.
    #[serde(default = "default_subjects")]
    pub subjects: Vec<String>,
    /// Whether the sessions the subject approved end too.
    #[serde(default)]
    pub revoke_approved: bool,
    /// The oldest `iat` accepted (humantime, default `1h`).
    #[serde(default)]
    pub max_age: Option<String>,
    /// How long fetched keys are trusted (default `5m`).
    #[serde(default)]
    pub jwks_cache: Option<String>,
    /// Clock-skew leeway for `iat` (default `60s`, at most 5 minutes).
    #[serde(default)]
    pub leeway: Option<String>,
}

fn default_subjects() -> Vec<String> {
    vec!["iss_sub".into()]
}

/// A subject format lockstep matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectFormat {
    /// An OIDC issuer and subject: the identity `oidc:<iss>:<sub>`.
    IssSub,
    /// A requester's verified `email` claim.
    Email,
}

impl SubjectFormat {
    /// Its name in SETs and in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IssSub => "iss_sub",
            Self::Email => "email",
        }
    }
}

impl TransmitterConfig {
    /// `subjects`, checked.
    pub fn subject_formats(&self) -> Result<Vec<SubjectFormat>, String> {
        if self.subjects.is_empty() {
            return Err("`subjects` must name iss_sub and/or email".into());
        }
        self.subjects
            .iter()
            .map(|s| match s.as_str() {
                "iss_sub" => Ok(SubjectFormat::IssSub),
                "email" => Ok(SubjectFormat::Email),
                other => Err(format!(
                    "`subjects`: `{other}` is not a format lockstep matches (iss_sub, email)"
                )),
            })
            .collect()
    }

    /// `max_age` in seconds, checked.
    pub fn max_age_secs(&self) -> Result<i64, String> {
        let text = self.max_age.as_deref().unwrap_or("1h");
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("`max_age = \"{text}\"` is not a duration like \"1h\": {e}"))?;
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        if secs == 0 || secs > MAX_SIGNAL_AGE_SECS {
            return Err("`max_age` must be 1s to 24h".into());
        }
        Ok(secs)
    }
}
