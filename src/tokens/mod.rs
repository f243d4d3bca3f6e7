//! Session-bound tokens: compact JWS (JWT, ES256) signed by a key held in
//! the HSM/TPM through the key boundary.
//!
//! Claims: `iss` (the service's public URL), `sub` (the requester), `aud`
//! (the resource or an audience the policy allows for it), `iat`, `nbf`,
//! `exp` (= the session's `closes_at`, exactly), `jti`, `sid` (the session
//! id), `request_hash` (`sha256:…` of the session's request), `approvers`
//! (who opened it), `resource`, and, when the token is bound to one of the
//! session's certificates, `cnf: {"x5t#S256": …}` (RFC 8705); tokens of a
//! break-glass session carry `break_glass: true`. The key is
//! published at `/.well-known/jwks.json` under its RFC 7638 thumbprint as
//! `kid`.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{DeviceKey, KeyError, Signature};

/// The claims of a lockstep token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Issuer: the service's public URL.
    pub iss: String,
    /// The requester's identity.
    pub sub: String,
    /// The audience.
    pub aud: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry: the session's `closes_at`.
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// Session id.
    pub sid: String,
    /// The session's request hash (`sha256:…`).
    pub request_hash: String,
    /// The approvers whose approvals opened the session.
    pub approvers: Vec<String>,
    /// The session's resource.
    pub resource: String,
    /// Confirmation: the certificate the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// `true` for a break-glass session (opened without a quorum, reviewed
    /// afterwards); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

/// RFC 8705 certificate-bound confirmation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url SHA-256 of the certificate's DER.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The RFC 8705 thumbprint of a certificate (base64url SHA-256 of its DER).
pub fn certificate_thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Signs and checks lockstep tokens with one device key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Arc<dyn DeviceKey>,
    kid: String,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .field("key", &self.key.name())
            .finish()
    }
}

impl TokenSigner {
    /// A signer for `key` (EC P-256).
    pub fn new(key: Arc<dyn DeviceKey>) -> Self {
        let point = key.public_key().sec1_uncompressed();
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        // RFC 7638: the thumbprint of the required members in lexical order.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "alg": "ES256", "use": "sig",
        });
        Self { key, kid, jwk }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWK Set publishing the key.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk] })
    }

    /// Signs `claims` into a compact JWS. Blocks on the device.
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, KeyError> {
        let header = Header {
            alg: "ES256".into(),
            typ: "JWT".into(),
            kid: self.kid.clone(),
        };
        let json = |r: serde_json::Result<Vec<u8>>| {
            r.map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
                .map_err(|e| KeyError::Unsupported(format!("cannot encode token: {e}")))
        };
        let input = format!(
            "{}.{}",
            json(serde_json::to_vec(&header))?,
            json(serde_json::to_vec(claims))?
        );
        let signature = self.key.sign(input.as_bytes())?;
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_raw())
        ))
    }

    /// The claims of `token` if it is a well-formed token signed by this
    /// key; `None` otherwise. Says nothing about expiry or the session.
    pub fn verify(&self, token: &str) -> Option<TokenClaims> {
        if token.len() > 16 * 1024 {
            return None;
        }
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        if header.alg != "ES256" || header.kid != self.kid {
            return None;
        }
        let signature = Signature::from_raw(&URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let input = &token[..h.len() + 1 + p.len()];
        if !self.key.public_key().verify(input.as_bytes(), &signature) {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()
    }
}

/// A new random token id (`tok_` + 26 base32 characters).
pub fn new_jti() -> Result<String, KeyError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| KeyError::Unsupported(format!("no randomness from the OS: {e}")))?;
    Ok(format!(
        "tok_{}",
        data_encoding::BASE32_NOPAD
            .encode(&bytes)
            .to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::soft::SoftKey;

    fn claims() -> TokenClaims {
        TokenClaims {
            iss: "https://lockstep.example".into(),
            sub: "token:svc".into(),
            aud: "api:billing".into(),
            iat: 1_900_000_000,
            nbf: 1_900_000_000,
            exp: 1_900_000_120,
            jti: new_jti().unwrap(),
            sid: "ses_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            request_hash: format!("sha256:{}", "ab".repeat(32)),
            approvers: vec!["token:bob".into()],
            resource: "api:billing".into(),
            cnf: Some(Confirmation {
                x5t_s256: certificate_thumbprint(b"cert"),
            }),
            break_glass: false,
        }
    }

    #[test]
    fn tokens_round_trip_and_tampering_is_caught() {
        let signer = TokenSigner::new(Arc::new(SoftKey::new(3)));
        let c = claims();
        let token = signer.sign(&c).unwrap();
        assert_eq!(signer.verify(&token).unwrap(), c);
        let other = TokenSigner::new(Arc::new(SoftKey::new(4)));
        assert!(
            other.verify(&token).is_none(),
            "another key's token accepted"
        );
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        payload["exp"] = serde_json::json!(2_000_000_000);
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
        assert!(
            signer.verify(&parts.join(".")).is_none(),
            "tampered token accepted"
        );
        for bad in ["", "a.b", "a.b.c.d", "x.y.z"] {
            assert!(signer.verify(bad).is_none());
        }
    }

    #[test]
    fn the_jwks_publishes_the_key_under_its_thumbprint() {
        let signer = TokenSigner::new(Arc::new(SoftKey::new(5)));
        let jwks = signer.jwks();
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], signer.kid());
        assert_eq!(key["alg"], "ES256");
        assert_eq!(signer.kid().len(), 43);
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(key["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
    }
}
