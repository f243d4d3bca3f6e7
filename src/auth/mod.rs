//! Caller authentication: bearer tokens in, a stable identity out.
//!
//! Two kinds of bearer token are accepted:
//! - static API tokens (`lst_…`), configured only as SHA-256 hashes; the
//!   caller is `token:<name>`;
//! - OIDC JWTs (ES256 or RS256) from configured issuers, checked against
//!   the issuer's JWKS; the caller is `oidc:<iss>:<sub>` and its claims are
//!   kept for policy to match (a CI system's repository, ref, workflow).

pub mod oidc;

use std::collections::BTreeMap;

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
