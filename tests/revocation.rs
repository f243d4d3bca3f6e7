//! Nothing outlives its session: closing revokes at once, as openssl (CRL,
//! OCSP), an independent JWT library and token introspection see it.

mod common;

use std::path::{Path, PathBuf};

use lockstep::clock::Timestamp;
use serde_json::{Value, json};

use common::backend::Backend;
use common::server::TestServer;
use common::{openssl, openssl_csr, write};

const POLICY: &str = r#"
operators = ["token:ops"]

[[resource]]
match = "db:*"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client", "token"]
audiences = ["payroll-api"]
credentials = 3

[[resource]]
match = "fenced:*"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
conditions = { source_networks = ["10.0.0.0/8"] }

[[resource]]
match = "local:*"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
conditions = { source_networks = ["127.0.0.0/8", "::1/128"] }
"#;

async fn start(name: &str) -> TestServer {
    start_on(Backend::SoftHsm, name).await
}

async fn start_on(backend: Backend, name: &str) -> TestServer {
    TestServer::start_on(
        backend,
        name,
        POLICY,
        &["alice", "bob", "ops", "mallory"],
        "",
    )
    .await
}

/// Requests and opens a session; returns its view.
async fn open(srv: &TestServer, resource: &str, profile: &str) -> Value {
    let (status, s) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some("alice"),
            Some(json!({"resource": resource, "task": "revocation test", "duration_secs": 600, "profile": profile})),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    let (status, s) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{}/approve", s["id"].as_str().unwrap()),
            Some("bob"),
            Some(json!({"request_hash": s["request_hash"]})),
        )
        .await;
    assert_eq!((status, s["state"].as_str()), (200, Some("open")), "{s}");
    s
}

/// Mints a certificate; returns its PEM path.
async fn certificate(srv: &TestServer, s: &Value, name: &str) -> PathBuf {
    let (_, pem) = openssl_csr(srv.dir.path(), name, "ec:P-256");
    let (status, cert) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{}/certificate", s["id"].as_str().unwrap()),
            Some("alice"),
            Some(json!({"csr": String::from_utf8(pem).unwrap()})),
        )
        .await;
    assert_eq!(status, 201, "{cert}");
    write(
        srv.dir.path(),
        &format!("{name}.pem"),
        cert["certificate"].as_str().unwrap(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn crl_number(srv: &TestServer, crl: &Path) -> u64 {
    let (ok, text) = openssl(&["crl", "-in", s(crl), "-noout", "-crlnumber"]);
    assert!(ok, "{text}");
    let hex = text
        .trim()
        .trim_start_matches("crlNumber=0x")
        .trim_start_matches("crlNumber=");
    let _ = srv;
    u64::from_str_radix(hex, 16).unwrap()
}

/// `openssl verify -crl_check` of `leaf` against `crl`.
fn verify_with_crl(srv: &TestServer, leaf: &Path, crl: &Path) -> (bool, String) {
    let issuing = srv.dir.path().join("ca/issuing.pem");
    openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        s(&srv.root_pem()),
        "-untrusted",
        s(&issuing),
        "-CRLfile",
        s(crl),
        s(leaf),
    ])
}

/// `openssl ocsp` against the service: returns its whole output.
fn ocsp(srv: &TestServer, leaf: &Path) -> String {
    srv.ocsp_text(leaf)
}

on_both_backends!(async closing_revokes_at_once_on_the_crl_and_in_ocsp);
async fn closing_revokes_at_once_on_the_crl_and_in_ocsp(backend: Backend) {
    let srv = start_on(backend, "rev-close").await;
    let session = open(&srv, "db:payroll", "mtls-client").await;
    let leaf = certificate(&srv, &session, "close-leaf").await;

    // The certificate names where to check.
    let (_, text) = openssl(&["x509", "-in", s(&leaf), "-noout", "-text"]);
    assert!(text.contains(&format!("URI:{}/v1/crl", srv.url)), "{text}");
    assert!(
        text.contains(&format!("OCSP - URI:{}/v1/ocsp", srv.url)),
        "{text}"
    );

    // Before the close: the CRL verifies and does not list it; OCSP says good.
    let crl = srv.crl_pem(&srv.url, "crl-before").await;
    let (ok, text) = openssl(&[
        "crl",
        "-in",
        s(&crl),
        "-noout",
        "-verify",
        "-CAfile",
        s(&srv.dir.path().join("ca/chain.pem")),
    ]);
    assert!(ok && text.contains("verify OK"), "{text}");
    let (ok, text) = verify_with_crl(&srv, &leaf, &crl);
    assert!(ok, "verify -crl_check before close: {text}");
    let before = crl_number(&srv, &crl);
    let text = ocsp(&srv, &leaf);
    assert!(text.contains(&format!("{}: good", s(&leaf))), "{text}");

    // The requester closes: revoked before the close call returned.
    let id = session["id"].as_str().unwrap();
    let (status, _) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/close"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let crl = srv.crl_pem(&srv.url, "crl-after").await;
    let (ok, text) = verify_with_crl(&srv, &leaf, &crl);
    assert!(
        !ok && text.contains("certificate revoked"),
        "verify -crl_check after close: {text}"
    );
    assert!(crl_number(&srv, &crl) > before, "CRL number increases");
    let (_, text) = openssl(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert!(text.contains("Cessation Of Operation"), "{text}");
    let text = ocsp(&srv, &leaf);
    assert!(text.contains(&format!("{}: revoked", s(&leaf))), "{text}");
    assert!(text.contains("Reason: cessationOfOperation"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_carries_the_reason_given() {
    let srv = start("rev-reason").await;
    let session = open(&srv, "db:orders", "mtls-client").await;
    let leaf = certificate(&srv, &session, "reason-leaf").await;
    let id = session["id"].as_str().unwrap();
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/revoke"),
            Some("ops"),
            Some(json!({"reason": "laptop stolen", "reason_code": "key-compromise"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let text = ocsp(&srv, &leaf);
    assert!(text.contains("Reason: keyCompromise"), "{text}");
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/revoke"),
            Some("ops"),
            Some(json!({"reason": "x", "reason_code": "because"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_answers_unknown_and_malformed() {
    let srv = start("rev-unknown").await;
    // A certificate from another CA: unknown to this responder.
    let dir = srv.dir.path();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    let (ok, text) = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("other.key"),
        "-out",
        &p("other.pem"),
        "-days",
        "1",
        "-subj",
        "/CN=other",
    ]);
    assert!(ok, "{text}");
    let issuing = dir.join("ca/issuing.pem");
    let (_, text) = openssl(&[
        "ocsp",
        "-issuer",
        s(&issuing),
        "-cert",
        &p("other.pem"),
        "-url",
        &format!("{}/v1/ocsp", srv.url),
        "-CAfile",
        s(&srv.root_pem()),
    ]);
    assert!(text.contains(": unknown"), "{text}");
    // Garbage: an OCSP malformedRequest status, not an HTTP error or a crash.
    let resp = srv
        .http
        .post(format!("{}/v1/ocsp", srv.url))
        .header("content-type", "application/ocsp-request")
        .body(b"not an ocsp request".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        &[0x30, 0x03, 0x0a, 0x01, 0x01]
    );
}

on_both_backends!(async tokens_are_verified_by_jsonwebtoken_and_die_with_their_session);
async fn tokens_are_verified_by_jsonwebtoken_and_die_with_their_session(backend: Backend) {
    let srv = start_on(backend, "rev-token").await;
    let session = open(&srv, "db:payroll", "mtls-client").await;
    let id = session["id"].as_str().unwrap();
    let leaf = certificate(&srv, &session, "tok-leaf").await;
    let leaf_pem = std::fs::read_to_string(&leaf).unwrap();
    let (status, tok) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/token"),
            Some("alice"),
            Some(json!({"audience": "payroll-api", "certificate": leaf_pem})),
        )
        .await;
    assert_eq!(status, 201, "{tok}");
    assert_eq!(tok["expires_at"], session["closes_at"]);
    let token = tok["token"].as_str().unwrap();

    // An independent JWT library verifies it against the published JWKS.
    let claims = srv.verified_claims(token, "payroll-api").await;
    let closes = Timestamp::parse_rfc3339(session["closes_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        claims["exp"].as_i64(),
        Some(closes.unix()),
        "exp == closes_at"
    );
    assert_eq!(claims["sub"], "token:alice");
    assert_eq!(claims["sid"], id);
    assert_eq!(claims["request_hash"], session["request_hash"]);
    assert_eq!(claims["approvers"], json!(["token:bob"]));
    let der = std::process::Command::new("openssl")
        .args(["x509", "-in", s(&leaf), "-outform", "DER"])
        .output()
        .unwrap()
        .stdout;
    use base64::Engine;
    let thumb = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(&der));
    assert_eq!(claims["cnf"]["x5t#S256"], thumb, "bound to the certificate");

    // Introspection: active while open, inactive after the close.
    let introspect = |t: String| {
        let srv = &srv;
        async move {
            let resp = srv
                .http
                .post(format!("{}/v1/introspect", srv.url))
                .bearer_auth(srv.token("ops"))
                .form(&[("token", t)])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let answer = introspect(token.to_owned()).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["sid"], id);
    assert_eq!(
        introspect("eyJhbGciOiJFUzI1NiJ9.e30.AAAA".into()).await["active"],
        false
    );
    let resp = srv
        .http
        .post(format!("{}/v1/introspect", srv.url))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "introspection needs a caller");

    // Binding to a certificate of another session is refused; other audiences too.
    let other = open(&srv, "db:other", "mtls-client").await;
    let other_leaf = certificate(&srv, &other, "other-leaf").await;
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/token"),
            Some("alice"),
            Some(json!({"certificate": std::fs::read_to_string(&other_leaf).unwrap()})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/token"),
            Some("alice"),
            Some(json!({"audience": "elsewhere"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("audience_not_allowed"))
    );
    // Tokens count against the limit (3): cert + token + one more, then refused.
    let (status, _) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/token"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/token"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("credential_limit_reached"))
    );

    let (status, _) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/close"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let answer = introspect(token.to_owned()).await;
    assert_eq!(
        answer,
        json!({"active": false}),
        "a token of a closed session is inactive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_condition_revokes_the_session() {
    let srv = start("rev-cond").await;
    // From 127.0.0.1, inside 127.0.0.0/8: fine.
    let ok = open(&srv, "local:hmi", "mtls-client").await;
    certificate(&srv, &ok, "cond-ok").await;
    // Outside 10.0.0.0/8: refused, and the session is revoked for good.
    let fenced = open(&srv, "fenced:plc", "mtls-client").await;
    let id = fenced["id"].as_str().unwrap();
    let (_, pem) = openssl_csr(srv.dir.path(), "cond-bad", "ec:P-256");
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/certificate"),
            Some("alice"),
            Some(json!({"csr": String::from_utf8(pem).unwrap()})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("condition_failed")),
        "{body}"
    );
    let (_, view) = srv
        .call("GET", &format!("/v1/sessions/{id}"), Some("alice"), None)
        .await;
    assert_eq!(view["close_reason"], "revoked");
    assert_eq!(view["closed_by"], "lockstep:policy");
    assert!(
        view["close_note"].as_str().unwrap().contains("127.0.0.1"),
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sessions_mint_tokens_only() {
    let srv = start("rev-tokonly").await;
    let s = open(&srv, "db:reports", "token").await;
    let id = s["id"].as_str().unwrap();
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/token"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, pem) = openssl_csr(srv.dir.path(), "tokonly", "ec:P-256");
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/certificate"),
            Some("alice"),
            Some(json!({"csr": String::from_utf8(pem).unwrap()})),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    // mallory cannot mint on alice's session.
    let (status, _) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/token"),
            Some("mallory"),
            None,
        )
        .await;
    assert_eq!(status, 404);
}
