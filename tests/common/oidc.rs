//! A test OIDC issuer: an HTTP server on 127.0.0.1 publishing a JWKS with
//! one ES256 key (kid `es`) and one RS256 key (kid `rs`), and helpers to
//! mint tokens with them, the way a CI system's IdP would.
//!
//! Self-contained (it uses nothing from `common`), so a test can include it
//! with `#[path = "common/oidc.rs"] mod oidc;` as well as via
//! `pub mod oidc;` in `common/mod.rs`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lockstep::clock::{Clock, SystemClock};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};

/// A running test issuer. The server stops when this is dropped.
pub struct TestIssuer {
    addr: SocketAddr,
    es_pkcs8: Vec<u8>,
    rs_pkcs1: Vec<u8>,
    rs_public_pem: Vec<u8>,
    jwks: Value,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh P-256 key: (PKCS#8 DER, uncompressed SEC1 point).
fn es_key() -> (Vec<u8>, Vec<u8>) {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("random bytes");
    let key = p256::ecdsa::SigningKey::from_slice(&secret).expect("P-256 scalar");
    let pkcs8 = key.to_pkcs8_der().expect("PKCS#8").as_bytes().to_vec();
    let point = key.verifying_key().to_sec1_point(false).as_bytes().to_vec();
    (pkcs8, point)
}

#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    n: der::asn1::UintRef<'a>,
    e: der::asn1::UintRef<'a>,
}

/// A fresh 2048-bit RSA key from the `openssl` CLI (ring cannot generate
/// RSA keys): (PKCS#1 DER, public key PEM, n, e).
fn rsa_key() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let (key, pkcs1, public, public_pem) = (
        file("key.pem"),
        file("key.der"),
        file("pub.der"),
        file("pub.pem"),
    );
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &key,
    ]);
    openssl(&[
        "rsa",
        "-in",
        &key,
        "-traditional",
        "-outform",
        "DER",
        "-out",
        &pkcs1,
    ]);
    openssl(&[
        "rsa",
        "-in",
        &key,
        "-RSAPublicKey_out",
        "-outform",
        "DER",
        "-out",
        &public,
    ]);
    openssl(&["rsa", "-in", &key, "-pubout", "-out", &public_pem]);
    let public = std::fs::read(public).unwrap();
    let parsed: RsaPublicKey<'_> = der::Decode::from_der(&public).expect("RSAPublicKey");
    (
        std::fs::read(pkcs1).unwrap(),
        std::fs::read(public_pem).unwrap(),
        parsed.n.as_bytes().to_vec(),
        parsed.e.as_bytes().to_vec(),
    )
}

/// A `reqwest` client for plain-HTTP loopback JWKS, with an explicit ring
/// TLS provider (this crate's reqwest is built without a default one, so
/// `reqwest::Client::new()` would panic).
pub fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

impl TestIssuer {
    /// Starts the issuer: fresh keys, and `GET /jwks.json` on 127.0.0.1 on
    /// a free port.
    pub async fn start() -> TestIssuer {
        let (es_pkcs8, es_point) = es_key();
        let (rs_pkcs1, rs_public_pem, n, e) = tokio::task::spawn_blocking(rsa_key)
            .await
            .expect("RSA key generation");
        let jwks = json!({ "keys": [
            {
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "es",
                "x": b64(&es_point[1..33]), "y": b64(&es_point[33..65]),
            },
            {
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "rs",
                "n": b64(&n), "e": b64(&e),
            },
        ]});
        let body = jwks.to_string();
        let app = Router::new().route(
            "/jwks.json",
            get(move || {
                let body = body.clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("JWKS server");
        });
        TestIssuer {
            addr,
            es_pkcs8,
            rs_pkcs1,
            rs_public_pem,
            jwks,
            task,
        }
    }

    /// The issuer's `iss`, `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the issuer publishes its JWKS.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// The published JWKS document.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    fn claims(&self, sub: &str, audience: &str, extra: Value, lifetime_secs: i64) -> Value {
        let now = SystemClock.now().unix();
        let mut claims = json!({
            "iss": self.issuer(), "sub": sub, "aud": audience,
            "iat": now, "nbf": now, "exp": now + lifetime_secs,
        });
        match extra {
            Value::Object(extra) => claims.as_object_mut().unwrap().extend(extra),
            Value::Null => {}
            other => panic!("extra_claims must be a JSON object, not {other}"),
        }
        claims
    }

    /// An ES256 token (kid `es`) for `sub` and `audience`: `iat` and `nbf`
    /// now, `exp` `lifetime_secs` from now (negative for an expired token),
    /// plus `extra_claims` (a JSON object; its entries win).
    pub fn token(
        &self,
        sub: &str,
        audience: &str,
        extra_claims: Value,
        lifetime_secs: i64,
    ) -> String {
        let claims = self.claims(sub, audience, extra_claims, lifetime_secs);
        self.sign_claims("ES256", Some("es"), claims)
    }

    /// Like [`TestIssuer::token`], signed RS256 (kid `rs`).
    pub fn token_rs256(
        &self,
        sub: &str,
        audience: &str,
        extra_claims: Value,
        lifetime_secs: i64,
    ) -> String {
        let claims = self.claims(sub, audience, extra_claims, lifetime_secs);
        self.sign_claims("RS256", Some("rs"), claims)
    }

    /// Signs exactly `claims` (nothing added), for negative tests.
    /// `header_alg` is `"ES256"` (signed with the EC key) or `"RS256"`
    /// (the RSA key), whatever `kid` says; also `"HS256"` (HMAC keyed with
    /// the RSA public key PEM, the classic algorithm-confusion forgery) and
    /// `"none"` (unsigned).
    pub fn sign_claims(&self, header_alg: &str, kid: Option<&str>, claims: Value) -> String {
        let (alg, key) = match header_alg {
            "ES256" => (Algorithm::ES256, EncodingKey::from_ec_der(&self.es_pkcs8)),
            "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_der(&self.rs_pkcs1)),
            "HS256" => (
                Algorithm::HS256,
                EncodingKey::from_secret(&self.rs_public_pem),
            ),
            "none" => {
                let mut header = json!({ "alg": "none", "typ": "JWT" });
                if let Some(kid) = kid {
                    header["kid"] = json!(kid);
                }
                return format!(
                    "{}.{}.",
                    b64(header.to_string().as_bytes()),
                    b64(claims.to_string().as_bytes())
                );
            }
            other => panic!("sign_claims: unsupported alg {other:?}"),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &key).expect("sign JWT")
    }
}
