//! A client of a lockstep server's HTTP API, used by the CLI.

use std::path::Path;

use reqwest::Method;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::ErrorBody;
use crate::api::views::{
    CertificateView, CsrBody, NewSessionBody, ReviewBody, RevokeBody, SessionList, SessionView,
    SshCertificateBody, SshCertificateView, TokenBody, TokenView, VoteBody,
};
use crate::error::Error;
use crate::net::{Trust, client};
use crate::sessions::ConnectionReport;

/// A connection to a lockstep server as one caller.
pub struct Client {
    http: reqwest::Client,
    /// For the event stream: no total timeout.
    streaming: reqwest::Client,
    base: String,
    token: SecretString,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `url`, trusting the CA certificates in
    /// `ca` (PEM; the public roots when none), authenticating with `token`.
    pub fn new(url: &str, ca: Option<&Path>, token: SecretString) -> Result<Self, Error> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("https://") {
            return Err(Error::InvalidArgument(format!(
                "the server URL must start with https:// (got `{base}`)"
            )));
        }
        let trust = match ca {
            None => Trust::PublicRoots,
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
                if certs.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "{}: no PEM certificates",
                        path.display()
                    )));
                }
                Trust::Only(certs)
            }
        };
        Ok(Self {
            http: client(trust.clone())?,
            streaming: crate::net::client_with(trust, None)?,
            base,
            token,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose_secret());
        if let Some(b) = body {
            req = req.json(b);
        }
        let bytes = body_of(req).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Connection(format!("unexpected answer from the server: {e}")))
    }

    /// `POST /v1/sessions`.
    pub async fn request(&self, body: &NewSessionBody) -> Result<SessionView, Error> {
        self.call(Method::POST, "/v1/sessions", Some(body)).await
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn session(&self, id: &str) -> Result<SessionView, Error> {
        self.call(
            Method::GET,
            &format!("/v1/sessions/{}", seg(id)),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/sessions`: up to `limit` sessions, newest first, following
    /// `next_before` from page to page. The answer's `next_before` is set
    /// when there may be more.
    pub async fn sessions(&self, state: Option<&str>, limit: usize) -> Result<SessionList, Error> {
        self.list(state, false, limit).await
    }

    /// `GET /v1/sessions?unreviewed=true`: break-glass sessions not (yet)
    /// reviewed justified, up to `limit`, newest first.
    pub async fn unreviewed(&self, limit: usize) -> Result<SessionList, Error> {
        self.list(None, true, limit).await
    }

    async fn list(
        &self,
        state: Option<&str>,
        unreviewed: bool,
        limit: usize,
    ) -> Result<SessionList, Error> {
        let limit = limit.max(1);
        let mut list = SessionList {
            sessions: Vec::new(),
            next_before: None,
        };
        let mut before: Option<String> = None;
        loop {
            let mut path = format!(
                "/v1/sessions?limit={}",
                (limit - list.sessions.len()).min(1000)
            );
            if let Some(s) = state {
                path.push_str(&format!("&state={}", seg(s)));
            }
            if unreviewed {
                path.push_str("&unreviewed=true");
            }
            if let Some(b) = &before {
                path.push_str(&format!("&before={}", seg(b)));
            }
            let page: SessionList = self.call(Method::GET, &path, None::<&()>).await?;
            list.sessions.extend(page.sessions);
            match page.next_before {
                Some(next) if list.sessions.len() < limit => before = Some(next),
                next => {
                    list.next_before = next;
                    return Ok(list);
                }
            }
        }
    }

    /// `POST /v1/sessions/{id}/approve`.
    pub async fn approve(&self, id: &str, request_hash: &str) -> Result<SessionView, Error> {
        let body = VoteBody {
            request_hash: request_hash.to_owned(),
            reason: None,
        };
        self.call(
            Method::POST,
            &format!("/v1/sessions/{}/approve", seg(id)),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/sessions/{id}/deny`.
    pub async fn deny(
        &self,
        id: &str,
        request_hash: &str,
        reason: Option<String>,
    ) -> Result<SessionView, Error> {
        let body = VoteBody {
            request_hash: request_hash.to_owned(),
            reason,
        };
        self.call(
            Method::POST,
            &format!("/v1/sessions/{}/deny", seg(id)),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/sessions/{id}/close`.
    pub async fn close(&self, id: &str) -> Result<SessionView, Error> {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{}/close", seg(id)),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/sessions/{id}/revoke`.
    pub async fn revoke(
        &self,
        id: &str,
        reason: String,
        reason_code: Option<crate::sessions::RevocationReason>,
    ) -> Result<SessionView, Error> {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{}/revoke", seg(id)),
            Some(&RevokeBody {
                reason,
                reason_code,
            }),
        )
        .await
    }

    /// `POST /v1/sessions/{id}/review`.
    pub async fn review(
        &self,
        id: &str,
        outcome: crate::sessions::Outcome,
        note: String,
    ) -> Result<SessionView, Error> {
        let body = ReviewBody {
            outcome: outcome.as_str().to_owned(),
            note,
        };
        self.call(
            Method::POST,
            &format!("/v1/sessions/{}/review", seg(id)),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/sessions/{id}/certificate`.
    pub async fn certificate(&self, id: &str, csr_pem: String) -> Result<CertificateView, Error> {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{}/certificate", seg(id)),
            Some(&CsrBody { csr: csr_pem }),
        )
        .await
    }
}

impl Client {
    /// `POST /v1/sessions/{id}/ssh`.
    pub async fn ssh_certificate(
        &self,
        id: &str,
        body: &SshCertificateBody,
    ) -> Result<SshCertificateView, Error> {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{}/ssh", seg(id)),
            Some(body),
        )
        .await
    }

    /// `POST /v1/sessions/{id}/signature`.
    pub async fn signature(
        &self,
        id: &str,
        body: &crate::api::views::SignatureBody,
    ) -> Result<crate::api::views::SignatureView, Error> {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{}/signature", seg(id)),
            Some(body),
        )
        .await
    }

    /// `GET /v1/tsa`: the timestamp authority's chain (PEM).
    pub async fn tsa_chain(&self) -> Result<String, Error> {
        let bytes = self.published("/v1/tsa").await?;
        String::from_utf8(bytes)
            .map_err(|_| Error::Connection("the TSA chain is not text (PEM)".into()))
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/sessions/{id}/token`.
    pub async fn token(&self, id: &str, body: &TokenBody) -> Result<TokenView, Error> {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{}/token", seg(id)),
            Some(body),
        )
        .await
    }

    /// `POST /v1/sessions/{id}/connections`: true if this call recorded
    /// the report, false if it was recorded before.
    pub async fn report_connection(
        &self,
        id: &str,
        report: &ConnectionReport,
    ) -> Result<bool, Error> {
        let view: crate::api::connections::ReportView = self
            .call(
                Method::POST,
                &format!("/v1/sessions/{}/connections", seg(id)),
                Some(report),
            )
            .await?;
        Ok(view.recorded)
    }

    /// `GET /v1/crl`: the issuing CA's current CRL (DER).
    pub async fn crl(&self) -> Result<Vec<u8>, Error> {
        self.published("/v1/crl").await
    }

    /// `GET /v1/ca`: the issuing CA's chain (PEM).
    pub async fn ca_chain(&self) -> Result<String, Error> {
        let bytes = self.published("/v1/ca").await?;
        String::from_utf8(bytes)
            .map_err(|_| Error::Connection("the CA chain is not text (PEM)".into()))
    }

    /// The body of a published document at `path` (no credentials sent).
    async fn published(&self, path: &str) -> Result<Vec<u8>, Error> {
        let req = self.http.get(format!("{}{path}", self.base));
        body_of(req).await
    }

    /// `GET /v1/events`, resuming after `last_event_id` when given: the
    /// open stream, once the server answered 200.
    pub async fn events(&self, last_event_id: Option<u64>) -> Result<reqwest::Response, Error> {
        let mut req = self
            .streaming
            .get(format!("{}/v1/events", self.base))
            .bearer_auth(self.token.expose_secret())
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Connection(describe(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        Err(remote(status, &bytes))
    }
}

/// Sends `req` and reads its whole answer: the body of a success, or the
/// error of a refusal.
async fn body_of(req: reqwest::RequestBuilder) -> Result<Vec<u8>, Error> {
    let resp = req
        .send()
        .await
        .map_err(|e| Error::Connection(describe(&e)))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::Connection(describe(&e)))?;
    if status.is_success() {
        Ok(bytes.to_vec())
    } else {
        Err(remote(status, &bytes))
    }
}

/// The error of a refused call, from its JSON error body (or its status).
fn remote(status: reqwest::StatusCode, body: &[u8]) -> Error {
    let err: ErrorBody = serde_json::from_slice(body).unwrap_or(ErrorBody {
        error: "remote_error".into(),
        message: format!("HTTP {status}"),
    });
    Error::Remote {
        status: status.as_u16(),
        code: err.error,
        message: err.message,
    }
}

/// Percent-encodes a path segment or query value.
fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A transport error's chain of causes (reqwest's top-level message alone
/// says little), without the URL's query.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
