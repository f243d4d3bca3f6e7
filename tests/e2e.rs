//! End to end over real HTTPS: the service on loopback, callers with API
//! tokens and OIDC JWTs, certificates checked by openssl and rustls.

mod common;

use std::time::Duration;

use lockstep::clock::{Clock, SystemClock, Timestamp};
use serde_json::{Value, json};

use common::server::TestServer;
use common::store::{Place, StoreKind};
use common::{openssl, openssl_csr, write};

const POLICY: &str = r#"
operators = ["token:ops"]
auditors = ["token:auditor"]

[[resource]]
match = "db:payroll"
requesters = ["token:alice"]
approvers = ["token:alice", "token:bob", "token:carol"]
quorum = 2
max_duration = "15m"
pending_timeout = "10m"
profiles = ["mtls-client"]

[[resource]]
match = "api:*"
requesters = ["token:svc"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client", "code-signing"]
credentials = 3

[[resource]]
match = "quick:*"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1m"
pending_timeout = "3s"
profiles = ["mtls-client"]

[[tenant]]
name = "acme"
members = ["token:acme-*"]
operators = ["token:acme-ops"]

[[resource]]
match = "ot:acme/*"
tenant = "acme"
requesters = ["token:acme-vendor"]
approvers = ["token:acme-lead", "token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
"#;

const CALLERS: &[&str] = &[
    "alice",
    "bob",
    "carol",
    "ops",
    "auditor",
    "mallory",
    "svc",
    "acme-vendor",
    "acme-lead",
    "acme-ops",
];

/// A service with its state in a store of `kind`.
async fn start_in(kind: StoreKind, name: &str) -> TestServer {
    TestServer::start_in(kind, name, POLICY, CALLERS, "").await
}

async fn start_at(place: Place, name: &str) -> TestServer {
    TestServer::start_at(place, name, POLICY, CALLERS, "").await
}

/// `openssl x509 -enddate` for an instant.
fn enddate(t: Timestamp) -> String {
    let dt = time::OffsetDateTime::from_unix_timestamp(t.unix()).unwrap();
    let fmt = time::macros::format_description!(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
    );
    format!("notAfter={}", dt.format(&fmt).unwrap())
}

on_every_place!(async request_approve_certificate_close);
async fn request_approve_certificate_close(place: Place) {
    let srv = start_at(place, "e2e-flow").await;
    let s = srv.request("alice", "db:payroll", 120).await;
    assert_eq!(s["state"], "pending");
    assert_eq!(s["quorum"], 2);
    let id = s["id"].as_str().unwrap().to_owned();

    // The requester cannot approve its own session, even though it is in the set.
    let (status, body) = srv.vote("alice", &s, "approve").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("self_approval"))
    );
    // An approval for another hash is refused.
    let stale = json!({"request_hash": format!("sha256:{}", "0".repeat(64))});
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/approve"),
            Some("bob"),
            Some(stale),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("request_hash_mismatch"))
    );
    // Minting before opening is refused.
    let pem = srv.csr("flow");
    let (status, body) = srv.certificate("alice", &id, &pem).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("session_not_open"))
    );

    let (status, body) = srv.vote("bob", &s, "approve").await;
    assert_eq!((status, body["state"].as_str()), (200, Some("pending")));
    let (status, body) = srv.vote("bob", &s, "approve").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("already_voted"))
    );
    let (status, open) = srv.vote("carol", &s, "approve").await;
    assert_eq!((status, open["state"].as_str()), (200, Some("open")));
    let opened = Timestamp::parse_rfc3339(open["opened_at"].as_str().unwrap()).unwrap();
    let closes = Timestamp::parse_rfc3339(open["closes_at"].as_str().unwrap()).unwrap();
    assert_eq!(closes.secs_since(opened), 120);

    // Only the requester mints.
    let (status, body) = srv.certificate("bob", &id, &pem).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("not_requester"))
    );
    let (status, cert) = srv.certificate("alice", &id, &pem).await;
    assert_eq!(status, 201, "{cert}");
    assert_eq!(cert["not_after"], open["closes_at"]);
    let dir = srv.dir.path();
    let leaf = write(dir, "flow.pem", cert["certificate"].as_str().unwrap());
    let chain = write(dir, "flow-chain.pem", cert["chain"].as_str().unwrap());
    let (ok, text) = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-enddate"]);
    assert!(ok);
    assert_eq!(text.trim(), enddate(closes), "notAfter == closes_at");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        srv.root_pem().to_str().unwrap(),
        "-untrusted",
        chain.to_str().unwrap(),
        "-purpose",
        "sslclient",
        leaf.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (_, text) = openssl(&[
        "x509",
        "-in",
        leaf.to_str().unwrap(),
        "-noout",
        "-text",
        "-certopt",
        "ext_parse",
    ]);
    assert!(text.contains("CN = db:payroll"), "{text}");
    assert!(
        text.contains(&format!("URI:urn:lockstep:session:{id}")),
        "{text}"
    );
    assert!(
        text.contains("URI:urn:lockstep:requester:token:alice"),
        "{text}"
    );
    assert!(
        text.contains("URI:urn:lockstep:resource:db:payroll"),
        "{text}"
    );
    assert!(
        text.contains("token:bob") && text.contains("token:carol"),
        "approvers in the extension: {text}"
    );
    assert!(
        !text.contains("ignored-by-lockstep") && !text.contains("evil"),
        "CSR names leaked: {text}"
    );

    // One-shot: a second certificate is refused.
    let (status, body) = srv.certificate("alice", &id, &pem).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("credential_limit_reached"))
    );

    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/close"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(
        (status, body["close_reason"].as_str()),
        (200, Some("completed"))
    );
    let (status, body) = srv.certificate("alice", &id, &pem).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("session_closed"))
    );
    let (status, body) = srv.vote("carol", &s, "approve").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("session_closed"))
    );

    // Everything is on the record, refusals included.
    let events = srv.events(&id).await;
    for kind in [
        "requested",
        "approved",
        "opened",
        "minted",
        "closed",
        "refused",
    ] {
        assert!(
            events.contains(&kind.to_owned()),
            "{kind} missing from {events:?}"
        );
    }
}

/// (method, path, caller, body, expected status, expected code)
type Case<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Option<Value>,
    u16,
    &'a str,
);

on_both_stores!(multi errors_are_json_with_the_right_status_and_change_nothing);
async fn errors_are_json_with_the_right_status_and_change_nothing(store: StoreKind) {
    let srv = start_in(store, "e2e-errors").await;
    let s = srv.request("alice", "db:payroll", 60).await;
    let id = s["id"].as_str().unwrap();
    let ok_body = json!({"resource": "db:payroll", "task": "t", "duration_secs": 60, "profile": "mtls-client"});
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/sessions".into(),
            None,
            Some(ok_body.clone()),
            401,
            "unauthenticated",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("Bearer:lst_not-a-token"),
            Some(ok_body.clone()),
            401,
            "unauthenticated",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("Bearer:eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
            Some(ok_body.clone()),
            401,
            "unauthenticated",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("mallory"),
            Some(ok_body.clone()),
            403,
            "not_a_requester",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("alice"),
            Some(
                json!({"resource": "db:other", "task": "t", "duration_secs": 60, "profile": "mtls-client"}),
            ),
            403,
            "no_policy",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("alice"),
            Some(
                json!({"resource": "db:payroll", "task": "t", "duration_secs": 60, "profile": "code-signing"}),
            ),
            403,
            "profile_not_allowed",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("alice"),
            Some(
                json!({"resource": "db:payroll", "task": "t", "duration_secs": 901, "profile": "mtls-client"}),
            ),
            400,
            "invalid_duration",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("alice"),
            Some(
                json!({"resource": "db:payroll", "task": "t", "duration_secs": 0, "profile": "mtls-client"}),
            ),
            400,
            "invalid_duration",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("alice"),
            Some(
                json!({"resource": "db:payroll", "task": "t", "duration_secs": -5, "profile": "mtls-client"}),
            ),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("alice"),
            Some(
                json!({"resource": "db:payroll", "task": "t", "duration_secs": 60, "profile": "mtls-client", "extra": 1}),
            ),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("alice"),
            Some(
                json!({"resource": "db:pay\u{1}roll", "task": "t", "duration_secs": 60, "profile": "mtls-client"}),
            ),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("alice"),
            Some(
                json!({"resource": "db:payroll", "task": "", "duration_secs": 60, "profile": "mtls-client"}),
            ),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            Some("alice"),
            Some(
                json!({"resource": "db:payroll", "task": "x".repeat(5000), "duration_secs": 60, "profile": "mtls-client"}),
            ),
            400,
            "invalid_request",
        ),
        (
            "GET",
            format!("/v1/sessions/{id}"),
            Some("mallory"),
            None,
            404,
            "session_not_found",
        ),
        (
            "GET",
            "/v1/sessions/ses_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            Some("alice"),
            None,
            404,
            "session_not_found",
        ),
        (
            "GET",
            "/v1/sessions/../../etc/passwd".into(),
            Some("alice"),
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/approve"),
            Some("mallory"),
            Some(json!({"request_hash": s["request_hash"]})),
            404,
            "session_not_found",
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/approve"),
            Some("auditor"),
            Some(json!({"request_hash": s["request_hash"]})),
            403,
            "not_an_approver",
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/approve"),
            Some("bob"),
            Some(json!({"request_hash": "nonsense"})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/close"),
            Some("bob"),
            None,
            403,
            "not_requester",
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/revoke"),
            Some("alice"),
            Some(json!({"reason": "x"})),
            403,
            "forbidden",
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/revoke"),
            Some("acme-ops"),
            Some(json!({"reason": "x"})),
            404,
            "session_not_found",
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/certificate"),
            Some("alice"),
            Some(json!({"csr": "garbage"})),
            400,
            "csr_malformed",
        ),
        (
            "DELETE",
            format!("/v1/sessions/{id}"),
            Some("alice"),
            None,
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/v1/nothing".into(),
            Some("alice"),
            None,
            404,
            "not_found",
        ),
    ];
    for (method, path, caller, body, status, code) in cases {
        let (got, json) = srv.call(method, &path, caller, body.clone()).await;
        assert_eq!(
            (got, json["error"].as_str()),
            (status, Some(code)),
            "{method} {path} as {caller:?}: {json}"
        );
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Malformed JSON, wrong content type, oversized body.
    let (status, body) = srv
        .raw(
            "POST",
            "/v1/sessions",
            "alice",
            "application/json",
            b"{\"resource\": ".to_vec(),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_json"))
    );
    let (status, body) = srv
        .raw(
            "POST",
            "/v1/sessions",
            "alice",
            "text/plain",
            b"resource=db:payroll".to_vec(),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let huge = serde_json::to_vec(&json!({"resource": "db:payroll", "task": "x".repeat(100_000), "duration_secs": 60, "profile": "mtls-client"})).unwrap();
    let (status, body) = srv
        .raw("POST", "/v1/sessions", "alice", "application/json", huge)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large"))
    );
    let (status, body) = srv
        .raw(
            "POST",
            &format!("/v1/sessions/{id}/certificate"),
            "alice",
            "application/pkcs10",
            vec![0x30; 70_000],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large"))
    );

    // None of it changed the session.
    let (status, now) = srv
        .call("GET", &format!("/v1/sessions/{id}"), Some("alice"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(now["state"], "pending");
    assert_eq!(now["approvals"], json!([]));
    assert_eq!(now["credentials_minted"], 0);
}

on_every_place!(async concurrent_certificate_requests_never_pass_the_limit);
async fn concurrent_certificate_requests_never_pass_the_limit(place: Place) {
    let srv = start_at(place, "e2e-race").await;
    let s = srv.request("svc", "api:billing", 600).await;
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    let pem = srv.csr("race");
    let srv = std::sync::Arc::new(srv);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let srv = srv.clone();
            let id = id.clone();
            let pem = pem.clone();
            tokio::spawn(async move { srv.certificate("svc", &id, &pem).await })
        })
        .collect();
    let mut issued = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            201 => issued.push(body["serial"].as_str().unwrap().to_owned()),
            409 => assert_eq!(body["error"], "credential_limit_reached"),
            other => panic!("{other}: {body}"),
        }
    }
    issued.sort();
    issued.dedup();
    assert_eq!(issued.len(), 3);
    let (_, view) = srv
        .call("GET", &format!("/v1/sessions/{id}"), Some("svc"), None)
        .await;
    assert_eq!(view["credentials_minted"], 3);
}

on_every_place!(async sessions_survive_a_restart);
async fn sessions_survive_a_restart(place: Place) {
    let srv = start_at(place, "e2e-restart").await;
    let open = srv.request("svc", "api:orders", 600).await;
    assert_eq!(srv.vote("bob", &open, "approve").await.0, 200);
    let pending = srv.request("alice", "db:payroll", 60).await;
    assert_eq!(srv.vote("bob", &pending, "approve").await.0, 200);
    let srv = srv.restart().await;
    let (_, view) = srv
        .call(
            "GET",
            &format!("/v1/sessions/{}", open["id"].as_str().unwrap()),
            Some("svc"),
            None,
        )
        .await;
    assert_eq!(view["state"], "open");
    let (_, view) = srv
        .call(
            "GET",
            &format!("/v1/sessions/{}", pending["id"].as_str().unwrap()),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(view["state"], "pending");
    assert_eq!(view["approvals"][0]["by"], "token:bob");
    // The second approval after the restart opens it.
    let (status, body) = srv.vote("carol", &pending, "approve").await;
    assert_eq!((status, body["state"].as_str()), (200, Some("open")));
}

on_both_stores!(multi a_short_session_certificate_works_until_closes_at_and_not_after);
async fn a_short_session_certificate_works_until_closes_at_and_not_after(store: StoreKind) {
    let srv = start_in(store, "e2e-short").await;
    let s = srv.request("alice", "quick:plc-7", 3).await;
    let id = s["id"].as_str().unwrap().to_owned();
    let (_, open) = srv.vote("bob", &s, "approve").await;
    assert_eq!(open["state"], "open");
    let closes = Timestamp::parse_rfc3339(open["closes_at"].as_str().unwrap()).unwrap();
    let dir = srv.dir.path().to_owned();
    let (key, pem) = openssl_csr(&dir, "short", "ec:P-256");
    let (status, cert) = srv
        .certificate("alice", &id, &String::from_utf8(pem).unwrap())
        .await;
    assert_eq!(status, 201, "{cert}");
    let issuing = std::fs::read_to_string(dir.join("ca/issuing.pem")).unwrap();
    let chain = write(
        &dir,
        "short-chain.pem",
        format!("{}{issuing}", cert["certificate"].as_str().unwrap()),
    );

    let (server_chain, server_key, server_ca) = common::tls::server_identity(&dir);
    let (addr, mut verdicts) =
        common::tls::server(&srv.root_pem(), (server_chain, server_key)).await;
    let verdict = common::tls::handshake(addr, &server_ca, &chain, &key, &mut verdicts).await;
    assert!(verdict.is_ok(), "accepted before closes_at: {verdict:?}");
    while SystemClock.now() <= closes.plus_secs(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let verdict = common::tls::handshake(addr, &server_ca, &chain, &key, &mut verdicts).await;
    assert!(
        verdict.as_ref().is_err_and(|e| e.contains("expired")),
        "refused after: {verdict:?}"
    );
    // The session itself expired at closes_at exactly.
    let (_, view) = srv
        .call("GET", &format!("/v1/sessions/{id}"), Some("alice"), None)
        .await;
    assert_eq!(view["close_reason"], "expired");
    assert_eq!(view["closed_at"], open["closes_at"]);
}

on_both_stores!(multi pending_sessions_are_abandoned_by_the_sweeper);
async fn pending_sessions_are_abandoned_by_the_sweeper(store: StoreKind) {
    let srv = start_in(store, "e2e-abandon").await;
    let s = srv.request("alice", "quick:hmi", 30).await;
    let id = s["id"].as_str().unwrap();
    let until = Timestamp::parse_rfc3339(s["pending_until"].as_str().unwrap()).unwrap();
    while SystemClock.now() <= until.plus_secs(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Read straight from the store: the background sweep closed it, not a read.
    let config = lockstep::config::Config::load(&srv.config_path).unwrap();
    let store = lockstep::store::open(&config.store.unwrap()).await.unwrap();
    let all = store.sessions(Default::default()).await.unwrap();
    let session = all.iter().find(|x| x.id.as_str() == id).unwrap();
    assert_eq!(
        session.closure.as_ref().unwrap().reason,
        lockstep::sessions::CloseReason::Abandoned
    );
    let (status, body) = srv.vote("bob", &s, "approve").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("session_closed"))
    );
}

on_both_stores!(multi deny_revoke_and_roles);
async fn deny_revoke_and_roles(store: StoreKind) {
    let srv = start_in(store, "e2e-roles").await;
    // One deny closes.
    let s = srv.request("alice", "db:payroll", 60).await;
    let id = s["id"].as_str().unwrap();
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/deny"),
            Some("carol"),
            Some(json!({"request_hash": s["request_hash"], "reason": "not during payroll run"})),
        )
        .await;
    assert_eq!(
        (status, body["close_reason"].as_str()),
        (200, Some("denied"))
    );
    assert_eq!(body["close_note"], "not during payroll run");

    // Operators and approvers revoke; auditors read; the tenant stays apart.
    let s = srv.request("svc", "api:billing", 600).await;
    let id = s["id"].as_str().unwrap();
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    let (status, view) = srv
        .call("GET", &format!("/v1/sessions/{id}"), Some("auditor"), None)
        .await;
    assert_eq!((status, view["your_role"].as_str()), (200, Some("auditor")));
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/revoke"),
            Some("auditor"),
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/revoke"),
            Some("ops"),
            Some(json!({"reason": "ticket CHG-42 closed"})),
        )
        .await;
    assert_eq!(
        (status, body["close_reason"].as_str()),
        (200, Some("revoked"))
    );
    assert_eq!(body["closed_by"], "token:ops");

    let t = srv.request("acme-vendor", "ot:acme/line-1", 600).await;
    let tid = t["id"].as_str().unwrap();
    for outsider in ["ops", "auditor", "mallory"] {
        let (status, _) = srv
            .call("GET", &format!("/v1/sessions/{tid}"), Some(outsider), None)
            .await;
        assert_eq!(status, 404, "{outsider} sees a tenant session");
    }
    let (status, _) = srv
        .call(
            "GET",
            &format!("/v1/sessions/{tid}"),
            Some("acme-ops"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // bob is in the approver list but not in the tenant: his approval does not count.
    let (status, _) = srv.vote("bob", &t, "approve").await;
    assert_eq!(status, 404);
    let (status, body) = srv.vote("acme-lead", &t, "approve").await;
    assert_eq!((status, body["state"].as_str()), (200, Some("open")));
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{tid}/revoke"),
            Some("acme-ops"),
            Some(json!({"reason": "shift over"})),
        )
        .await;
    assert_eq!(
        (status, body["close_reason"].as_str()),
        (200, Some("revoked"))
    );

    // Listing shows each caller what it may see.
    let (_, list) = srv
        .call("GET", "/v1/sessions?state=closed", Some("acme-ops"), None)
        .await;
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![tid]);
    let (status, body) = srv
        .call("GET", "/v1/sessions?state=weird", Some("alice"), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_callers_are_matched_by_identity_and_claims() {
    let issuer = common::oidc::TestIssuer::start().await;
    let policy = format!(
        "{POLICY}\n[[resource]]\nmatch = \"release:acme/*\"\nrequesters = [\"oidc:{iss}:repo:acme/*\"]\napprovers = [\"token:bob\"]\nquorum = 1\nmax_duration = \"10m\"\nprofiles = [\"code-signing\"]\nclaims = {{ ref = \"refs/heads/main\" }}\n",
        iss = issuer.issuer()
    );
    let extra = format!(
        "[[auth.oidc]]\nissuer = \"{}\"\naudience = \"lockstep\"\njwks = \"{}\"\n",
        issuer.issuer(),
        issuer.jwks_url()
    );
    let srv = TestServer::start("e2e-oidc", &policy, CALLERS, &extra).await;
    let body = json!({"resource": "release:acme/app", "task": "sign v1.2.3", "duration_secs": 300,
        "profile": "code-signing", "request_digest": format!("sha256:{}", "ab".repeat(32))});
    let main = issuer.token(
        "repo:acme/app:ref:refs/heads/main",
        "lockstep",
        json!({"ref": "refs/heads/main", "repository": "acme/app"}),
        300,
    );
    let (status, s) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some(&format!("Bearer:{main}")),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(
        s["requester"],
        format!("oidc:{}:repo:acme/app:ref:refs/heads/main", issuer.issuer())
    );
    let dev = issuer.token(
        "repo:acme/app:ref:refs/heads/dev",
        "lockstep",
        json!({"ref": "refs/heads/dev"}),
        300,
    );
    let (status, e) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some(&format!("Bearer:{dev}")),
            Some(body.clone()),
        )
        .await;
    assert_eq!((status, e["error"].as_str()), (403, Some("claim_mismatch")));
    let other_aud = issuer.token(
        "repo:acme/app:ref:refs/heads/main",
        "someone-else",
        json!({"ref": "refs/heads/main"}),
        300,
    );
    let (status, _) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some(&format!("Bearer:{other_aud}")),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 401);
    let expired = issuer.token(
        "repo:acme/app:ref:refs/heads/main",
        "lockstep",
        json!({"ref": "refs/heads/main"}),
        -120,
    );
    let (status, _) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some(&format!("Bearer:{expired}")),
            Some(body),
        )
        .await;
    assert_eq!(status, 401);
    // The CI job gets its code-signing certificate once approved.
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    let pem = srv.csr("oidc");
    let (status, cert) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{}/certificate", s["id"].as_str().unwrap()),
            Some(&format!("Bearer:{main}")),
            Some(json!({"csr": pem})),
        )
        .await;
    assert_eq!(status, 201, "{cert}");
    let leaf = write(
        srv.dir.path(),
        "oidc.pem",
        cert["certificate"].as_str().unwrap(),
    );
    let (_, text) = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains("Code Signing"), "{text}");
}

on_every_place!(async health_ca_and_openapi);
async fn health_ca_and_openapi(place: Place) {
    let srv = start_at(place, "e2e-meta").await;
    for path in ["/healthz", "/readyz"] {
        let (status, body) = srv.call("GET", path, None, None).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("ok")),
            "{path}"
        );
    }
    let resp = srv
        .http
        .get(format!("{}/v1/ca", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let chain = resp.text().await.unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    let (status, doc) = srv.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/approve",
        "/v1/sessions/{id}/deny",
        "/v1/sessions/{id}/close",
        "/v1/sessions/{id}/revoke",
        "/v1/sessions/{id}/certificate",
        "/v1/ca",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    // The server certificate chains to the lockstep root and names 127.0.0.1.
    let raw = srv
        .http
        .get(format!("https://localhost:{}/healthz", srv.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
}

/// The TPM goes away under a running service: readiness fails, a
/// certificate request fails fast with `key_backend_unavailable` and
/// changes nothing; once the TPM is back, the same service issues again.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tpm_fails_fast_changes_nothing_and_recovers() {
    let mut tpm = common::tpm::SwTpm::start();
    let (keys, evict) =
        common::backend::tpm_ca_config_at(&tpm.tcti(), "e2e-tpm-outage", 3650, 1095);
    let srv = TestServer::start_with_keys(keys, Some(evict), POLICY, CALLERS, "").await;
    let s = srv.request("svc", "api:outage", 600).await;
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    let pem = srv.csr("outage");
    assert_eq!(srv.certificate("svc", &id, &pem).await.0, 201);

    tpm.kill();
    let (status, body) = srv.call("GET", "/readyz", None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("key_backend_unavailable")),
        "{body}"
    );
    let started = std::time::Instant::now();
    let (status, body) = srv.certificate("svc", &id, &pem).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("key_backend_unavailable")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let (_, view) = srv
        .call("GET", &format!("/v1/sessions/{id}"), Some("svc"), None)
        .await;
    assert_eq!(
        (view["state"].as_str(), view["credentials_minted"].as_u64()),
        (Some("open"), Some(1)),
        "{view}"
    );

    tpm.restart();
    let (status, _) = srv.call("GET", "/readyz", None, None).await;
    assert_eq!(status, 200);
    let (status, body) = srv.certificate("svc", &id, &pem).await;
    assert_eq!(status, 201, "{body}");
    let (_, view) = srv
        .call("GET", &format!("/v1/sessions/{id}"), Some("svc"), None)
        .await;
    assert_eq!(view["credentials_minted"], 2);
}
