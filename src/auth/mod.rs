//! Caller authentication: bearer tokens in, a stable identity out.
//!
//! Two kinds of bearer token are accepted:
//! - static API tokens (`lst_…`), configured only as SHA-256 hashes; the
//!   caller is `token:<name>`;
//! - OIDC JWTs (ES256 or RS256) from configured issuers, checked against
//!   the issuer's JWKS; the caller is `oidc:<iss>:<sub>` and its claims are
//!   kept for policy to match (a CI system's repository, ref, workflow).

pub mod oidc;
pub mod tokens;

use std::collections::BTreeMap;

use crate::clock::Timestamp;
use oidc::OidcVerifier;
use tokens::{StaticTokens, TOKEN_PREFIX};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// The stable identity policy refers to.
    pub identity: String,
    /// The token's claims (OIDC); empty for static tokens.
    pub claims: BTreeMap<String, serde_json::Value>,
}

impl Caller {
    /// A caller with no claims.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            claims: BTreeMap::new(),
        }
    }
}

/// Why a bearer token was not accepted. Messages say what to fix and never
/// contain the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Missing,
    /// The token is not acceptable (unknown, malformed, bad signature,
    /// expired, wrong audience, …).
    #[error("invalid bearer token: {0}")]
    Rejected(String),
    /// The issuer's keys could not be fetched; try again later.
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
    /// The authentication configuration is unusable.
    #[error("authentication configuration: {0}")]
    Config(String),
}

impl AuthError {
    /// The machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing | Self::Rejected(_) => "unauthenticated",
            Self::Unavailable(_) => "auth_unavailable",
            Self::Config(_) => "config_invalid",
        }
    }
}

/// Turns `Authorization` headers into callers.
pub struct Authenticator {
    tokens: StaticTokens,
    oidc: Option<OidcVerifier>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("static_tokens", &self.tokens.len())
            .field("oidc", &self.oidc.is_some())
            .finish()
    }
}

/// Longest `Authorization` header value accepted.
const MAX_AUTHORIZATION: usize = 16 * 1024;

impl Authenticator {
    /// An authenticator for static tokens and, optionally, OIDC issuers.
    pub fn new(tokens: StaticTokens, oidc: Option<OidcVerifier>) -> Self {
        Self { tokens, oidc }
    }

    /// Authenticates the value of an `Authorization` header
    /// (`Bearer <token>`).
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        now: Timestamp,
    ) -> Result<Caller, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        if header.len() > MAX_AUTHORIZATION {
            return Err(AuthError::Rejected(
                "the Authorization header is too long".into(),
            ));
        }
        let (scheme, token) = header.trim().split_once(' ').ok_or_else(|| {
            AuthError::Rejected("expected `Authorization: Bearer <token>`".into())
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Rejected(
                "only the Bearer authentication scheme is accepted".into(),
            ));
        }
        let token = token.trim();
        if token.starts_with(TOKEN_PREFIX) {
            return self
                .tokens
                .verify(token)
                .ok_or_else(|| AuthError::Rejected("unknown API token".into()));
        }
        if OidcVerifier::looks_like_jwt(token) {
            return match &self.oidc {
                Some(v) => v.verify(token, now).await,
                None => Err(AuthError::Rejected(
                    "OIDC tokens are not accepted here: no [[auth.oidc]] issuer is configured"
                        .into(),
                )),
            };
        }
        Err(AuthError::Rejected(
            "not a lockstep API token (lst_…) or a JWT".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[tokio::test]
    async fn bearer_tokens_are_routed_and_checked() {
        let (token, sha256) = tokens::generate().unwrap();
        let auth = Authenticator::new(
            StaticTokens::new(&[tokens::TokenEntry {
                name: "ci".into(),
                sha256,
            }])
            .unwrap(),
            None,
        );
        let now = Timestamp::from_unix(0);
        let ok = format!("Bearer {}", token.expose_secret());
        assert_eq!(
            auth.authenticate(Some(&ok), now).await.unwrap().identity,
            "token:ci"
        );
        let lower = format!("bearer {}", token.expose_secret());
        assert!(auth.authenticate(Some(&lower), now).await.is_ok());
        for (header, code) in [
            (None, "unauthenticated"),
            (Some("Basic YWxpY2U6cGFzcw=="), "unauthenticated"),
            (Some("Bearer lst_nope"), "unauthenticated"),
            (Some("Bearer"), "unauthenticated"),
            (Some("Bearer a.b.c"), "unauthenticated"),
            (Some("Bearer something-else"), "unauthenticated"),
        ] {
            let err = auth.authenticate(header, now).await.unwrap_err();
            assert_eq!(err.code(), code, "{header:?}");
            assert!(!err.to_string().contains("YWxpY2U"), "token echoed");
        }
        let huge = format!("Bearer {}", "a".repeat(20_000));
        assert!(auth.authenticate(Some(&huge), now).await.is_err());
    }
}
