//! Fetching, caching and parsing an issuer's JWKS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::Url;
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use super::{
    FETCH_TIMEOUT, Issuer, MAX_JWKS_BYTES, RETRY_WITH_STALE_KEYS_SECS, RETRY_WITHOUT_KEYS_SECS,
    UNKNOWN_KID_REFETCH_SECS,
};
use crate::auth::AuthError;
use crate::clock::Timestamp;

/// Where an issuer's JWKS comes from.
#[derive(Clone, Debug)]
pub(super) enum JwksSource {
    Url(Url),
    File(PathBuf),
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url) => write!(f, "{url}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// A verification key taken from a JWKS.
pub(super) struct VerifyKey {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
}

pub(super) type KeySet = Arc<[VerifyKey]>;

/// What is known about an issuer's keys. All instants are the callers'
/// `now`, so tests drive the cache with the same clock as the claims.
#[derive(Default)]
pub(super) struct KeyCache {
    keys: Option<KeySet>,
    fetched_at: Option<Timestamp>,
    last_attempt: Option<Timestamp>,
    last_failure: Option<Timestamp>,
    last_error: Option<String>,
}

/// What to do about keys for one verification.
enum Decision {
    /// Verify with these keys.
    Use(KeySet),
    /// Fetch; `fallback` are older keys that know the token's `kid`, usable
    /// without waiting if another task is fetching already.
    Fetch { fallback: Option<KeySet> },
    /// Give up now.
    Fail(AuthError),
}

/// True if `t` is set and `now` is less than `window` seconds after it. An
/// instant in the future (the clock went back) counts as long ago.
fn within(now: Timestamp, t: Option<Timestamp>, window: i64) -> bool {
    t.is_some_and(|t| (0..window).contains(&now.secs_since(t)))
}

fn knows_kid(keys: &[VerifyKey], kid: Option<&str>) -> bool {
    match kid {
        None => true,
        Some(kid) => keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
    }
}

impl KeyCache {
    fn decide(&self, now: Timestamp, kid: Option<&str>, ttl: i64) -> Decision {
        let Some(keys) = &self.keys else {
            if within(now, self.last_failure, RETRY_WITHOUT_KEYS_SECS) {
                return Decision::Fail(AuthError::Unavailable(
                    self.last_error
                        .clone()
                        .unwrap_or_else(|| "the issuer's keys could not be fetched".to_owned()),
                ));
            }
            return Decision::Fetch { fallback: None };
        };
        let fresh = within(now, self.fetched_at, ttl);
        let known = knows_kid(keys, kid);
        if fresh && known {
            return Decision::Use(keys.clone());
        }
        if within(now, self.last_failure, RETRY_WITH_STALE_KEYS_SECS) {
            // A refresh failed recently: keep to what we have.
            return Decision::Use(keys.clone());
        }
        if fresh && within(now, self.last_attempt, UNKNOWN_KID_REFETCH_SECS) {
            // Unknown kid, but the keys were fetched a moment ago.
            return Decision::Use(keys.clone());
        }
        Decision::Fetch {
            fallback: known.then(|| keys.clone()),
        }
    }
}

impl Issuer {
    fn cache(&self) -> MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The keys to verify a token with `kid` at `now`, fetching if needed.
    pub(super) async fn keys(
        &self,
        http: &reqwest::Client,
        now: Timestamp,
        kid: Option<&str>,
    ) -> Result<KeySet, AuthError> {
        let decision = self.cache().decide(now, kid, self.cache_ttl_secs);
        let fallback = match decision {
            Decision::Use(keys) => return Ok(keys),
            Decision::Fail(e) => return Err(e),
            Decision::Fetch { fallback } => fallback,
        };
        let _fetching = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) => match fallback {
                // Someone is refreshing; the keys we have know this kid.
                Some(keys) => return Ok(keys),
                None => self.fetching.lock().await,
            },
        };
        // Another task may have fetched while we waited.
        let decision = self.cache().decide(now, kid, self.cache_ttl_secs);
        match decision {
            Decision::Use(keys) => return Ok(keys),
            Decision::Fail(e) => return Err(e),
            Decision::Fetch { .. } => {}
        }
        // Counted before the fetch, so that a verification abandoned midway
        // (the client went away) still counts against the refetch limit.
        self.cache().last_attempt = Some(now);
        let fetched = self.fetch(http).await;
        let mut cache = self.cache();
        match fetched {
            Ok(keys) => {
                if keys.is_empty() {
                    tracing::warn!(
                        issuer = %self.issuer,
                        jwks = %self.source,
                        "the issuer's JWKS has no usable ES256/RS256 signing key"
                    );
                } else {
                    tracing::debug!(
                        issuer = %self.issuer,
                        jwks = %self.source,
                        keys = keys.len(),
                        "fetched the issuer's JWKS"
                    );
                }
                let keys: KeySet = keys.into();
                cache.keys = Some(keys.clone());
                cache.fetched_at = Some(now);
                cache.last_failure = None;
                cache.last_error = None;
                Ok(keys)
            }
            Err(error) => {
                let error = format!("issuer `{}`: {error}", self.issuer);
                cache.last_failure = Some(now);
                cache.last_error = Some(error.clone());
                match &cache.keys {
                    Some(keys) => {
                        tracing::warn!(
                            issuer = %self.issuer,
                            %error,
                            "cannot refresh the issuer's JWKS; using the keys fetched earlier"
                        );
                        Ok(keys.clone())
                    }
                    None => {
                        tracing::warn!(
                            issuer = %self.issuer,
                            %error,
                            "cannot fetch the issuer's JWKS"
                        );
                        Err(AuthError::Unavailable(error))
                    }
                }
            }
        }
    }

    /// Fetches and parses the JWKS, bounded in time and size.
    async fn fetch(&self, http: &reqwest::Client) -> Result<Vec<VerifyKey>, String> {
        let body = match tokio::time::timeout(FETCH_TIMEOUT, self.read_source(http)).await {
            Ok(body) => body?,
            Err(_) => {
                return Err(format!(
                    "JWKS {} did not arrive within {} s",
                    self.source,
                    FETCH_TIMEOUT.as_secs()
                ));
            }
        };
        parse_jwks(&body).map_err(|e| format!("JWKS {}: {e}", self.source))
    }

    async fn read_source(&self, http: &reqwest::Client) -> Result<Vec<u8>, String> {
        match &self.source {
            JwksSource::Url(url) => fetch_url(http, url).await,
            JwksSource::File(path) => read_file(path).await,
        }
    }
}

/// An error and its causes, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn fetch_url(http: &reqwest::Client, url: &Url) -> Result<Vec<u8>, String> {
    let mut response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("cannot fetch JWKS {url}: {}", error_chain(&e.without_url())))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("JWKS {url} answered HTTP {status}"));
    }
    if response
        .content_length()
        .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
    {
        return Err(format!(
            "JWKS {url} is larger than {} KiB",
            MAX_JWKS_BYTES / 1024
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cannot read JWKS {url}: {}", error_chain(&e.without_url())))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "JWKS {url} is larger than {} KiB",
                MAX_JWKS_BYTES / 1024
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot open JWKS file {}: {e}", path.display()))?;
    let mut body = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .await
        .map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "JWKS file {} is larger than {} KiB",
            path.display(),
            MAX_JWKS_BYTES / 1024
        ));
    }
    Ok(body)
}

/// Parses a JWKS document; keys lockstep cannot use are skipped.
pub(super) fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyKey>, String> {
    #[derive(serde::Deserialize)]
    struct JwkSet {
        keys: Vec<Value>,
    }
    let set: JwkSet = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWKS (a JSON object `{{\"keys\": [...]}}`): {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (index, jwk) in set.keys.iter().enumerate() {
        match parse_jwk(jwk) {
            Ok(key) => keys.push(key),
            Err(why) => tracing::debug!(index, why, "skipping a JWKS key lockstep cannot use"),
        }
    }
    Ok(keys)
}

fn b64url(text: &str) -> Result<Vec<u8>, &'static str> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| "a key parameter is not unpadded base64url")
}

fn str_field<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, &'static str> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err("a key field that must be a string is not"),
    }
}

/// One JWK as a verification key, if it is an ES256 or RS256 signing key.
fn parse_jwk(jwk: &Value) -> Result<VerifyKey, &'static str> {
    let jwk = jwk.as_object().ok_or("not a JSON object")?;
    let kid = str_field(jwk, "kid")?.map(str::to_owned);
    if let Some(usage) = str_field(jwk, "use")?
        && usage != "sig"
    {
        return Err("`use` is not `sig`");
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err("`key_ops` does not include `verify`");
        }
    }
    let alg = str_field(jwk, "alg")?;
    match str_field(jwk, "kty")? {
        Some("EC") => {
            if alg.is_some_and(|a| a != "ES256") {
                return Err("EC key for an algorithm other than ES256");
            }
            if str_field(jwk, "crv")? != Some("P-256") {
                return Err("EC key not on P-256");
            }
            let x_text = str_field(jwk, "x")?.ok_or("EC key without `x`")?;
            let y_text = str_field(jwk, "y")?.ok_or("EC key without `y`")?;
            let (x, y) = (b64url(x_text)?, b64url(y_text)?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates are not 32 bytes");
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            p256::PublicKey::from_sec1_bytes(&point).map_err(|_| "EC point not on P-256")?;
            // For EC keys, jsonwebtoken's "DER" is the SEC1 point ring takes.
            let key = DecodingKey::from_ec_der(&point);
            Ok(VerifyKey {
                kid,
                alg: Algorithm::ES256,
                key,
            })
        }
        Some("RSA") => {
            if alg.is_some_and(|a| a != "RS256") {
                return Err("RSA key for an algorithm other than RS256");
            }
            let n = b64url(str_field(jwk, "n")?.ok_or("RSA key without `n`")?)?;
            let e = b64url(str_field(jwk, "e")?.ok_or("RSA key without `e`")?)?;
            let n = strip_leading_zeros(&n);
            let e = strip_leading_zeros(&e);
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if !(2048..=8192).contains(&bits) {
                return Err("RSA modulus is not 2048 to 8192 bits");
            }
            if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
                return Err("RSA exponent is unusable");
            }
            Ok(VerifyKey {
                kid,
                alg: Algorithm::RS256,
                key: DecodingKey::from_rsa_raw_components(n, e),
            })
        }
        _ => Err("key type is not EC or RSA"),
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}
