//! The steps of a session as one-line calls on a [`TestServer`], for tests
//! that need an open session before they get to what they test.

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
