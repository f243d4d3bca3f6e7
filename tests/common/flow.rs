//! The steps of a session as one-line calls on a [`TestServer`], for tests
//! that need an open session before they get to what they test.

use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use super::openssl_csr;
use super::server::TestServer;

impl TestServer {
    /// `who` requests `secs` seconds on `resource` (profile `mtls-client`);
    /// panics unless the request is accepted.
    pub async fn request(&self, who: &str, resource: &str, secs: u32) -> Value {
        let (status, body) = self
            .call(
                "POST",
                "/v1/sessions",
                Some(who),
                Some(json!({"resource": resource, "task": "test task", "duration_secs": secs, "profile": "mtls-client"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// `who` approves or denies (`verb`) the session `s` with its hash.
    pub async fn vote(&self, who: &str, s: &Value, verb: &str) -> (u16, Value) {
        let path = format!("/v1/sessions/{}/{verb}", s["id"].as_str().unwrap());
        self.call(
            "POST",
            &path,
            Some(who),
            Some(json!({"request_hash": s["request_hash"]})),
        )
        .await
    }

    /// A P-256 CSR in PEM made by openssl, its key kept in the server's
    /// directory as `name`.
    pub fn csr(&self, name: &str) -> String {
        let (_, pem) = openssl_csr(self.dir.path(), name, "ec:P-256");
        String::from_utf8(pem).unwrap()
    }

    /// `who` asks for a certificate on session `id`.
    pub async fn certificate(&self, who: &str, id: &str, csr: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/v1/sessions/{id}/certificate"),
            Some(who),
            Some(json!({ "csr": csr })),
        )
        .await
    }

    /// `who` closes the session `id` (its requester: completed); panics
    /// unless the close is accepted.
    pub async fn close(&self, who: &str, id: &str) {
        let (status, body) = self
            .call("POST", &format!("/v1/sessions/{id}/close"), Some(who), None)
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// The session `id` as `who` sees it.
    pub async fn session(&self, who: &str, id: &str) -> Value {
        let (status, body) = self
            .call("GET", &format!("/v1/sessions/{id}"), Some(who), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl TestServer {
    /// The kinds of the events recorded for session `id`, oldest first, read
    /// from the store (whichever the configuration names).
    pub async fn events(&self, id: &str) -> Vec<String> {
        let config = lockstep::config::Config::load(&self.config_path).unwrap();
        let store = lockstep::store::open(&config.store.unwrap()).await.unwrap();
        let id = lockstep::sessions::SessionId::parse(id).unwrap();
        store
            .events(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.kind().to_owned())
            .collect()
    }
}

impl TestServer {
    /// The claims of a token this server minted for `audience`, verified
    /// by jsonwebtoken (a JWT library lockstep did not write) against the
    /// published JWKS: ES256, the key id published, issuer and audience.
    pub async fn verified_claims(&self, token: &str, audience: &str) -> Value {
        let jwks: jsonwebtoken::jwk::JwkSet = self
            .http
            .get(format!("{}/.well-known/jwks.json", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        let jwk = jwks
            .find(header.kid.as_deref().unwrap())
            .expect("kid published");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[self.url.as_str()]);
        jsonwebtoken::decode::<Value>(
            token,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .expect("jsonwebtoken accepts the token")
        .claims
    }

    /// The `lockstep` client binary run as caller `who` against this
    /// server (its URL, root and `who`'s token in the environment).
    pub fn cli(&self, who: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args(args)
            .env("LOCKSTEP_URL", &self.url)
            .env("LOCKSTEP_CA", self.root_pem())
            .env("LOCKSTEP_TOKEN", self.token(who))
            .env("SOFTHSM2_CONF", &super::softhsm().conf)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl TestServer {
    /// `openssl ocsp` against this server for the certificate `leaf`
    /// (PEM): its whole output, after checking the response verified.
    pub fn ocsp_text(&self, leaf: &std::path::Path) -> String {
        let issuing = self.dir.path().join("ca/issuing.pem");
        let (ok, text) = super::openssl(&[
            "ocsp",
            "-issuer",
            issuing.to_str().unwrap(),
            "-cert",
            leaf.to_str().unwrap(),
            "-url",
            &format!("{}/v1/ocsp", self.url),
            "-CAfile",
            self.root_pem().to_str().unwrap(),
            "-resp_text",
        ]);
        assert!(ok, "openssl ocsp failed: {text}");
        assert!(text.contains("Response verify OK"), "{text}");
        text
    }
}
