//! OIDC JWT verification against issuers' JWKS.
//!
//! A CI system (GitHub Actions, GitLab, …) hands its jobs a short-lived JWT
//! signed by the system's OIDC issuer. lockstep trusts the issuers named in
//! `[[auth.oidc]]` and checks each token against its issuer's published
//! keys (JWKS):
//!
//! - only ES256 (EC P-256 keys) and RS256 (RSA keys) are accepted; the key
//!   is chosen by `kid`, and the token's `alg` must be the key's algorithm,
//!   so `alg: none`, HMAC and algorithm/key-type confusion are refused;
//! - the issuer is picked by the token's `iss`, and everything else is then
//!   checked with that issuer's keys and settings only;
//! - `exp` is required; `nbf` and `iat` are checked if present; `aud` must
//!   name the configured audience; `sub` is required. Time is the `now` the
//!   caller passes, with the configured clock-skew leeway;
//! - keys are fetched lazily, cached for `jwks_cache`, refetched for an
//!   unknown `kid` at most once per 30 s, and never fetched twice at once
//!   for one issuer. When a refresh fails, the keys fetched earlier stay in
//!   use; with none, the token cannot be checked
//!   ([`AuthError::Unavailable`]).
//!
//! Error messages and logs never contain the token or any part of it.

mod jwks;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use reqwest::Url;
use serde_json::{Map, Value};

use crate::auth::{AuthError, Caller};
use crate::clock::Timestamp;
use jwks::{JwksSource, KeyCache, VerifyKey};

/// Tokens longer than this (in bytes) are refused before they are parsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// A JWKS document larger than this (in bytes) is refused.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// How long one JWKS fetch may take, connection to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A token naming a `kid` not in the cache triggers a refetch at most this
/// often (seconds) per issuer, so made-up kids cannot hammer the IdP.
const UNKNOWN_KID_REFETCH_SECS: i64 = 30;
/// After a failed fetch with no keys at all, wait this long (seconds)
/// before trying again: one timeout per interval, not one per request.
const RETRY_WITHOUT_KEYS_SECS: i64 = 5;
/// After a failed refresh while older keys are still usable, wait this long
/// (seconds) before trying again.
const RETRY_WITH_STALE_KEYS_SECS: i64 = 30;
const DEFAULT_JWKS_CACHE: &str = "5m";
const DEFAULT_LEEWAY: &str = "60s";
/// The largest clock-skew leeway accepted in configuration (seconds): more
/// would quietly extend every token's lifetime.
const MAX_LEEWAY_SECS: u64 = 300;
/// The longest `sub` accepted, in characters.
const MAX_SUB_CHARS: usize = 256;

/// One trusted issuer, from the `[[auth.oidc]]` TOML tables.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// The exact `iss` value of the issuer's tokens.
    pub issuer: String,
    /// The audience lockstep expects: `aud` must be this string or an array
    /// containing it.
    pub audience: String,
    /// Where the issuer's keys are: an `https://` URL; `http://` only for
    /// loopback hosts (`127.0.0.1`, `::1`, `localhost`), for tests; or
    /// `file:PATH`, relative paths resolved against the configuration's
    /// directory.
    pub jwks: String,
    /// How long fetched keys are trusted before they are fetched again
    /// (humantime, e.g. `"5m"`, the default).
    #[serde(default)]
    pub jwks_cache: Option<String>,
    /// Clock-skew leeway for `exp`, `nbf` and `iat` (humantime, e.g.
    /// `"60s"`, the default; at most 5 minutes).
    #[serde(default)]
    pub leeway: Option<String>,
}

/// Verifies OIDC JWTs from the configured issuers. Cheap to share: wrap it
/// in an `Arc` and call [`OidcVerifier::verify`] from many tasks at once.
pub struct OidcVerifier {
    issuers: HashMap<String, Issuer>,
    http: reqwest::Client,
}

impl fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut issuers: Vec<&Issuer> = self.issuers.values().collect();
        issuers.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        f.debug_struct("OidcVerifier")
            .field("issuers", &issuers)
            .finish_non_exhaustive()
    }
}

/// One configured issuer of signed JWTs and its key cache: an OIDC
/// issuer of callers' tokens, or a Shared Signals transmitter.
pub(crate) struct Issuer {
    issuer: String,
    audience: String,
    source: JwksSource,
    cache_ttl_secs: i64,
    leeway_secs: i64,
    cache: Mutex<KeyCache>,
    /// Held while fetching, so one issuer's keys are never fetched twice at
    /// once.
    fetching: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks", &self.source.to_string())
            .field("cache_ttl_secs", &self.cache_ttl_secs)
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}

fn rejected(why: &str) -> AuthError {
    AuthError::Rejected(why.to_owned())
}

/// Why a signed JWT was refused before its claims were looked at, by the
/// part that failed (a Shared Signals receiver must say which: RFC 8935).
#[derive(Debug)]
pub(crate) enum JwtFault {
    /// Not a well-formed JWS, or a header lockstep refuses.
    Malformed(String),
    /// No usable key for it, or the signature does not verify.
    Key(String),
    /// Its `iss` is not the issuer's.
    Issuer,
    /// Its `aud` does not name the expected audience.
    Audience,
    /// The issuer's keys cannot be had now.
    Unavailable(String),
}

impl JwtFault {
    /// What failed, in words that never quote the token.
    pub(crate) fn message(&self) -> &str {
        match self {
            Self::Malformed(m) | Self::Key(m) | Self::Unavailable(m) => m,
            Self::Issuer => "the token's issuer (`iss`) does not match",
            Self::Audience => "the token is not for this audience (`aud`)",
        }
    }
}

impl From<JwtFault> for AuthError {
    fn from(f: JwtFault) -> Self {
        match f {
            JwtFault::Unavailable(m) => AuthError::Unavailable(m),
            other => AuthError::Rejected(other.message().to_owned()),
        }
    }
}

fn malformed(why: &str) -> JwtFault {
    JwtFault::Malformed(why.to_owned())
}

fn bad_key(why: &str) -> JwtFault {
    JwtFault::Key(why.to_owned())
}

/// The parts of the (unverified) header lockstep looks at.
pub(crate) struct TokenHeader {
    alg: Algorithm,
    kid: Option<String>,
    /// The media type of the whole token (`typ`), if given.
    pub(crate) typ: Option<String>,
}

/// A JWT whose signature, `iss` and `aud` were verified; its times and
/// other claims are for the caller to check.
pub(crate) struct VerifiedJwt {
    pub(crate) header: TokenHeader,
    pub(crate) claims: Map<String, Value>,
}

fn decode_json_object(segment: &str, what: &str) -> Result<Map<String, Value>, JwtFault> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtFault::Malformed(format!("the JWT {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtFault::Malformed(format!(
            "the JWT {what} is not a JSON object"
        ))),
    }
}

fn parse_header(segment: &str) -> Result<TokenHeader, JwtFault> {
    let header = decode_json_object(segment, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        _ => return Err(malformed("the JWT header has no `alg`")),
    };
    let alg = match alg {
        "ES256" => Algorithm::ES256,
        "RS256" => Algorithm::RS256,
        a if a.eq_ignore_ascii_case("none") => {
            return Err(malformed("unsigned tokens (`alg: none`) are refused"));
        }
        a if a.starts_with("HS") => {
            return Err(malformed(
                "HMAC-signed tokens are refused; only ES256 and RS256 are accepted",
            ));
        }
        _ => {
            return Err(malformed(
                "the token's algorithm is not accepted; only ES256 and RS256 are",
            ));
        }
    };
    if header.contains_key("crit") {
        return Err(malformed(
            "the JWT header has `crit` extensions lockstep does not understand",
        ));
    }
    let text = |name: &str| match header.get(name) {
        None => Ok(None),
        Some(Value::String(v)) => Ok(Some(v.clone())),
        Some(_) => Err(JwtFault::Malformed(format!(
            "the JWT header's `{name}` is not a string"
        ))),
    };
    Ok(TokenHeader {
        alg,
        kid: text("kid")?,
        typ: text("typ")?,
    })
}

/// The unverified `iss` of `token`, after the checks any JWT gets before
/// its issuer is looked up: size, shape, a JSON payload. Only for picking
/// whose keys decide.
pub(crate) fn unverified_issuer(token: &str) -> Result<String, JwtFault> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtFault::Malformed(format!(
            "the token is larger than {} KiB",
            MAX_TOKEN_BYTES / 1024
        )));
    }
    if !OidcVerifier::looks_like_jwt(token) {
        return Err(malformed("the token is not a JWT"));
    }
    let payload = token.split('.').nth(1).unwrap_or_default();
    let unverified = decode_json_object(payload, "payload")?;
    match unverified.get("iss").and_then(Value::as_str) {
        Some(iss) => Ok(iss.to_owned()),
        None => Err(malformed("the token has no issuer (`iss`)")),
    }
}

/// The key a token is to be verified with: by `kid`, or the only key when
/// the token has none; its algorithm must be the token's.
fn select_key<'k>(
    keys: &'k [VerifyKey],
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<&'k VerifyKey, JwtFault> {
    if keys.is_empty() {
        return Err(bad_key("the issuer publishes no usable ES256/RS256 key"));
    }
    let candidates: Vec<&VerifyKey> = match kid {
        Some(kid) => keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect(),
        None if keys.len() == 1 => keys.iter().collect(),
        None => {
            return Err(bad_key(
                "the token has no key id (`kid`) and the issuer has several keys",
            ));
        }
    };
    if candidates.is_empty() {
        return Err(bad_key(
            "the token's key id (`kid`) is not among the issuer's keys",
        ));
    }
    let mut matching = candidates.into_iter().filter(|k| k.alg == alg);
    match (matching.next(), matching.next()) {
        (Some(key), None) => Ok(key),
        (None, _) => Err(bad_key(
            "the token's algorithm does not match the type of its key",
        )),
        (Some(_), Some(_)) => Err(bad_key("the token's key id (`kid`) is ambiguous")),
    }
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> JwtFault {
    // Never the error's own text: it may quote parts of the token.
    match e.kind() {
        ErrorKind::InvalidSignature => {
            bad_key("the signature does not verify with the issuer's key")
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            bad_key("the token's algorithm does not match the type of its key")
        }
        ErrorKind::InvalidAudience => JwtFault::Audience,
        ErrorKind::InvalidIssuer => JwtFault::Issuer,
        _ => malformed("the token is malformed"),
    }
}

/// A NumericDate claim as whole seconds: fractional values are rounded
/// toward the stricter side by `round`.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
    round: fn(f64) -> f64,
) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_i64() {
                return Ok(Some(v));
            }
            match n.as_f64() {
                // `as` saturates, which is the right thing at the extremes.
                Some(v) if v.is_finite() => Ok(Some(round(v) as i64)),
                _ => Err(AuthError::Rejected(format!(
                    "the `{name}` claim is not a usable time"
                ))),
            }
        }
        Some(_) => Err(AuthError::Rejected(format!(
            "the `{name}` claim is not a number"
        ))),
    }
}

impl Issuer {
    /// Checks the verified claims at `now`.
    fn check_claims(&self, claims: &Map<String, Value>, now: Timestamp) -> Result<(), AuthError> {
        let now = now.unix();
        let leeway = self.leeway_secs;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(rejected("the token's issuer (`iss`) does not match"));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => auds
                .iter()
                .any(|a| a.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(rejected("the token is not for this audience (`aud`)"));
        }
        let exp = numeric_date(claims, "exp", f64::floor)?
            .ok_or_else(|| rejected("the token has no expiry (`exp`)"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(rejected("the token has expired"));
        }
        if let Some(nbf) = numeric_date(claims, "nbf", f64::ceil)?
            && nbf > now.saturating_add(leeway)
        {
            return Err(rejected("the token is not valid yet (`nbf`)"));
        }
        if let Some(iat) = numeric_date(claims, "iat", f64::ceil)?
            && iat > now.saturating_add(leeway)
        {
            return Err(rejected("the token was issued in the future (`iat`)"));
        }
        let sub = match claims.get("sub") {
            Some(Value::String(sub)) => sub,
            _ => return Err(rejected("the token has no subject (`sub`)")),
        };
        let chars = sub.chars().count();
        if chars == 0 || chars > MAX_SUB_CHARS {
            return Err(AuthError::Rejected(format!(
                "the token's subject (`sub`) must be 1 to {MAX_SUB_CHARS} characters"
            )));
        }
        if sub.chars().any(char::is_control) {
            return Err(rejected(
                "the token's subject (`sub`) contains control characters",
            ));
        }
        Ok(())
    }
}

fn parse_duration(
    section: &str,
    issuer: &str,
    field: &str,
    text: Option<&str>,
    default: &str,
) -> Result<Duration, AuthError> {
    let text = text.unwrap_or(default);
    humantime::parse_duration(text).map_err(|e| {
        AuthError::Config(format!(
            "{section} issuer `{issuer}`: `{field} = \"{text}\"` is not a duration like \"{default}\": {e}"
        ))
    })
}

fn parse_source(
    section: &str,
    issuer: &str,
    jwks: &str,
    base_dir: &Path,
) -> Result<JwksSource, AuthError> {
    let config =
        |why: String| AuthError::Config(format!("{section} issuer `{issuer}`: `jwks`: {why}"));
    if let Some(path) = jwks.strip_prefix("file:") {
        if path.is_empty() {
            return Err(config("`file:` needs a path".to_owned()));
        }
        let path = Path::new(path);
        return Ok(JwksSource::File(if path.is_relative() {
            base_dir.join(path)
        } else {
            path.to_owned()
        }));
    }
    let url = Url::parse(jwks)
        .map_err(|e| config(format!("`{jwks}` is not an https:// URL or file:PATH: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config("the URL must not carry credentials".to_owned()));
    }
    match url.scheme() {
        "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(JwksSource::Url(url)),
        "http" => {
            // The URL parser normalises hosts: lower case, `127.1` to
            // `127.0.0.1`, IPv6 compressed and bracketed.
            let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if loopback {
                Ok(JwksSource::Url(url))
            } else {
                Err(config(format!(
                    "`{jwks}`: plain http:// is allowed only for 127.0.0.1, ::1 and localhost; use https://"
                )))
            }
        }
        _ => Err(config(format!(
            "`{jwks}` is not an https:// URL or file:PATH"
        ))),
    }
}

impl Issuer {
    /// An issuer of signed JWTs from its configuration, checked; `section`
    /// names the configuration table in error messages.
    pub(crate) fn from_config(
        config: &OidcIssuerConfig,
        base_dir: &Path,
        section: &str,
    ) -> Result<Self, AuthError> {
        let issuer = config.issuer.as_str();
        if issuer.trim().is_empty() {
            return Err(AuthError::Config(format!(
                "an {section} entry has an empty `issuer`"
            )));
        }
        if issuer.trim() != issuer || issuer.chars().any(char::is_control) {
            return Err(AuthError::Config(format!(
                "{section} issuer `{}`: `issuer` has surrounding white space or control characters",
                issuer.escape_debug()
            )));
        }
        if config.audience.trim().is_empty() {
            return Err(AuthError::Config(format!(
                "{section} issuer `{issuer}`: `audience` is empty"
            )));
        }
        let source = parse_source(section, issuer, &config.jwks, base_dir)?;
        let ttl = parse_duration(
            section,
            issuer,
            "jwks_cache",
            config.jwks_cache.as_deref(),
            DEFAULT_JWKS_CACHE,
        )?;
        if ttl.as_secs() == 0 {
            return Err(AuthError::Config(format!(
                "{section} issuer `{issuer}`: `jwks_cache` must be at least 1s"
            )));
        }
        let leeway = parse_duration(
            section,
            issuer,
            "leeway",
            config.leeway.as_deref(),
            DEFAULT_LEEWAY,
        )?;
        if leeway.as_secs() > MAX_LEEWAY_SECS {
            return Err(AuthError::Config(format!(
                "{section} issuer `{issuer}`: `leeway` must be at most {MAX_LEEWAY_SECS}s"
            )));
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: config.audience.clone(),
            source,
            cache_ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            // At most MAX_LEEWAY_SECS, checked above.
            leeway_secs: leeway.as_secs() as i64,
            cache: Mutex::new(KeyCache::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }
}

impl Issuer {
    /// The issuer's exact `iss`.
    pub(crate) fn name(&self) -> &str {
        &self.issuer
    }

    /// Verifies `token`'s signature with this issuer's keys (by `kid`, the
    /// key's own algorithm only), and its `iss` and `aud`. Times are left
    /// to the caller, against its `now`.
    pub(crate) async fn verified(
        &self,
        http: &reqwest::Client,
        token: &str,
        now: Timestamp,
    ) -> Result<VerifiedJwt, JwtFault> {
        let header = token.split('.').next().unwrap_or_default();
        let header = parse_header(header)?;
        let keys = self
            .keys(http, now, header.kid.as_deref())
            .await
            .map_err(|e| match e {
                AuthError::Unavailable(m) => JwtFault::Unavailable(m),
                other => JwtFault::Key(other.to_string()),
            })?;
        let key = select_key(&keys, header.alg, header.kid.as_deref())?;
        let mut validation = Validation::new(key.alg);
        validation.algorithms = vec![key.alg];
        // Time is checked by the caller against its `now`, not the system
        // clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.required_spec_claims = HashSet::new();
        validation.validate_aud = true;
        validation.set_audience(&[self.audience.as_str()]);
        validation.set_issuer(&[self.issuer.as_str()]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| map_jwt_error(&e))?;
        Ok(VerifiedJwt {
            header,
            claims: data.claims,
        })
    }

    /// The clock-skew leeway configured, seconds.
    pub(crate) fn leeway_secs(&self) -> i64 {
        self.leeway_secs
    }
}

impl OidcVerifier {
    /// Builds a verifier for `issuers`, checking their configuration: a
    /// non-empty `issuer` and `audience`, parseable durations, an
    /// `https://` (or loopback `http://`) or `file:` JWKS, no issuer twice.
    /// Relative `file:` paths are resolved against `base_dir`. `http` is the
    /// client JWKS are fetched with (its TLS roots are the caller's choice).
    /// No key is fetched here; that happens on first use.
    pub fn new(
        issuers: &[OidcIssuerConfig],
        base_dir: &Path,
        http: reqwest::Client,
    ) -> Result<Self, AuthError> {
        let mut by_issuer = HashMap::with_capacity(issuers.len());
        for config in issuers {
            let issuer = Issuer::from_config(config, base_dir, "[[auth.oidc]]")?;
            if by_issuer.contains_key(&issuer.issuer) {
                return Err(AuthError::Config(format!(
                    "[[auth.oidc]] issuer `{}` is configured twice",
                    issuer.issuer
                )));
            }
            by_issuer.insert(issuer.issuer.clone(), issuer);
        }
        Ok(Self {
            issuers: by_issuer,
            http,
        })
    }

    /// Verifies `token` at time `now`: signature with the issuer's key, then
    /// `iss`, `aud`, `exp`, `nbf`, `iat` and `sub`. The caller's identity is
    /// `oidc:<iss>:<sub>` and its claims are all of the token's claims.
    ///
    /// [`AuthError::Rejected`] for a token that is not acceptable;
    /// [`AuthError::Unavailable`] when the issuer's keys cannot be had.
    pub async fn verify(&self, token: &str, now: Timestamp) -> Result<Caller, AuthError> {
        let iss = unverified_issuer(token)?;
        let Some(issuer) = self.issuers.get(&iss) else {
            return Err(rejected("the token's issuer (`iss`) is not trusted"));
        };
        let claims = issuer.verified(&self.http, token, now).await?.claims;
        issuer.check_claims(&claims, now)?;

        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let identity = format!("oidc:{}:{sub}", issuer.issuer);
        Ok(Caller {
            identity,
            claims: claims.into_iter().collect(),
        })
    }

    /// A cheap syntactic check, to route a bearer token to OIDC rather than
    /// static-token checking: three base64url segments separated by dots
    /// (the signature may be empty, so `alg: none` tokens are routed here
    /// and refused as such).
    pub fn looks_like_jwt(token: &str) -> bool {
        let b64url = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let mut parts = token.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(header), Some(payload), Some(signature), None) => {
                !header.is_empty()
                    && !payload.is_empty()
                    && b64url(header)
                    && b64url(payload)
                    && b64url(signature)
            }
            _ => false,
        }
    }
}
