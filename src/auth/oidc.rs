//! OIDC JWT verification against issuers' JWKS.
