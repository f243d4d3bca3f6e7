//! The OpenAPI document against independent validators and against what the
//! server does.
//!
//! - `/openapi.json` as served must be valid OpenAPI 3.1
//!   (openapi-spec-validator, pinned in tests/python-requirements.txt).
//! - A table of real calls (success and refusals) on a running server:
//!   every answer's status must be documented for its operation and its
//!   JSON body must match the documented schema (openapi-schema-validator);
//!   every documented operation must be called and answer 2xx at least once,
//!   and none may be answered by the router's fallbacks
//!   (tests/python/openapi_check.py).
//! - Parameters: every documented query parameter is accepted with a value
//!   of its type, refused (400) with a malformed one; unknown query
//!   parameters are refused (400) by operations that have query parameters
//!   and ignored by those that have none.
//!
//! That the router serves exactly the documented (method, path) pairs is a
//! unit test beside the document (src/api/openapi.rs).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use common::server::TestServer;

const POLICY: &str = r#"
operators = ["token:ops"]
auditors = ["token:auditor"]

[[resource]]
match = "db:payroll"
requesters = ["token:alice"]
approvers = ["token:bob", "token:carol"]
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
pending_timeout = "10m"
profiles = ["mtls-client", "token"]
credentials = 5

[[resource]]
match = "ssh:*"
requesters = ["token:svc"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["ssh-user"]
ssh = { principals = ["vendor"] }

[[resource]]
match = "incident:*"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
break_glass = { requesters = ["token:svc"], max_duration = "30m", per_day = 1 }

[[resource]]
match = "release:*"
requesters = ["token:svc"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["code-signing"]

[[gateway]]
identities = ["token:gw"]
resources = ["api:*"]
"#;

/// An OpenSSH public key to certify.
const SSH_KEY: &str = r#"{"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHUdbWTqbV1b7dsDNYgb7EJ7ZrqCkVAoSTHHCtfHdAvp x@y"}"#;

const CALLERS: &[&str] = &[
    "alice", "bob", "carol", "svc", "ops", "auditor", "mallory", "gw",
];

const JSON: &str = "application/json";
const SECEVENT: &str = "application/secevent+jwt";

/// A break-glass request (the policy allows `svc` one a day), and a review.
const GLASS: &str = r#"{"resource": "incident:db", "task": "t", "duration_secs": 600, "profile": "mtls-client", "break_glass": true}"#;
const REVIEW: &str = r#"{"outcome": "justified", "note": "the primary was down"}"#;

/// A gateway's report of a connection carried with `$open`'s certificate.
const CONNECTION: &str = r#"{"report": "con_1", "route": "api", "serial": "$serial",
    "client": "127.0.0.1:40000", "started_at": "2026-01-01T00:00:00Z",
    "ended_at": "2026-01-01T00:01:00Z", "bytes_from_client": 10, "bytes_to_client": 20,
    "ended": "closed"}"#;

/// One real call: who (`""`: nobody), method, path, content type (`""`:
/// none), body, and the status it must get. `$name` in the path or body is
/// replaced by the value the test set up under that name.
struct Row {
    who: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: String,
    status: u16,
}

fn row(
    who: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: impl Into<String>,
    status: u16,
) -> Row {
    Row {
        who,
        method,
        path,
        content_type,
        body: body.into(),
        status,
    }
}

/// The calls, in order (some change the sessions later rows use).
fn table() -> Vec<Row> {
    let new =
        r#"{"resource": "db:payroll", "task": "t", "duration_secs": 60, "profile": "mtls-client"}"#;
    let big = format!(r#"{{"task": "{}"}}"#, "a".repeat(70_000));
    let hash = |name: &str| format!(r#"{{"request_hash": "${name}_hash"}}"#);
    vec![
        row("alice", "POST", "/v1/sessions", JSON, new, 201),
        row("", "POST", "/v1/sessions", JSON, new, 401),
        row("mallory", "POST", "/v1/sessions", JSON, new, 403),
        row("alice", "POST", "/v1/sessions", JSON, "{", 400),
        row("alice", "POST", "/v1/sessions", "text/plain", new, 415),
        row("alice", "POST", "/v1/sessions", JSON, big.clone(), 413),
        row("alice", "GET", "/v1/sessions", "", "", 200),
        row("alice", "GET", "/v1/sessions?state=bogus", "", "", 400),
        row("", "GET", "/v1/sessions", "", "", 401),
        row("alice", "GET", "/v1/sessions/$pending", "", "", 200),
        row("mallory", "GET", "/v1/sessions/$pending", "", "", 404),
        row("alice", "GET", "/v1/sessions/ses_nonsense", "", "", 404),
        row("", "GET", "/v1/sessions/$pending", "", "", 401),
        row(
            "bob",
            "POST",
            "/v1/sessions/$pending/approve",
            JSON,
            hash("pending"),
            200,
        ),
        row(
            "bob",
            "POST",
            "/v1/sessions/$pending/approve",
            JSON,
            hash("pending"),
            409,
        ),
        row(
            "alice",
            "POST",
            "/v1/sessions/$pending/approve",
            JSON,
            hash("pending"),
            403,
        ),
        row(
            "carol",
            "POST",
            "/v1/sessions/$pending/approve",
            JSON,
            r#"{"request_hash": 5}"#,
            400,
        ),
        row(
            "carol",
            "POST",
            "/v1/sessions/$pending/approve",
            "text/plain",
            hash("pending"),
            415,
        ),
        row(
            "carol",
            "POST",
            "/v1/sessions/$pending/approve",
            JSON,
            big.clone(),
            413,
        ),
        row(
            "mallory",
            "POST",
            "/v1/sessions/$pending/approve",
            JSON,
            hash("pending"),
            404,
        ),
        row(
            "",
            "POST",
            "/v1/sessions/$pending/approve",
            JSON,
            hash("pending"),
            401,
        ),
        row(
            "carol",
            "POST",
            "/v1/sessions/$to_deny/deny",
            JSON,
            hash("to_deny"),
            200,
        ),
        row(
            "carol",
            "POST",
            "/v1/sessions/$to_deny/deny",
            JSON,
            hash("to_deny"),
            409,
        ),
        row(
            "carol",
            "POST",
            "/v1/sessions/$pending/deny",
            JSON,
            "[]",
            400,
        ),
        row("svc", "POST", "/v1/sessions/$to_close/close", "", "", 200),
        row("svc", "POST", "/v1/sessions/$to_close/close", "", "", 409),
        row("bob", "POST", "/v1/sessions/$open/close", "", "", 403),
        row("alice", "POST", "/v1/sessions/$open/close", "", "", 404),
        row(
            "bob",
            "POST",
            "/v1/sessions/$to_revoke/revoke",
            JSON,
            r#"{"reason": "done"}"#,
            200,
        ),
        row(
            "bob",
            "POST",
            "/v1/sessions/$to_revoke/revoke",
            JSON,
            r#"{"reason": "again"}"#,
            409,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/revoke",
            JSON,
            r#"{"reason": "mine"}"#,
            403,
        ),
        row("bob", "POST", "/v1/sessions/$open/revoke", JSON, "{}", 400),
        row("svc", "POST", "/v1/sessions", JSON, GLASS, 429),
        row("", "POST", "/v1/signals", SECEVENT, "$set", 202),
        row("", "POST", "/v1/signals", SECEVENT, "$set", 400),
        row("", "POST", "/v1/signals", SECEVENT, "e30.e30.", 400),
        row("", "POST", "/v1/signals", JSON, "{}", 415),
        row(
            "svc",
            "POST",
            "/v1/sessions/$glass/review",
            JSON,
            REVIEW,
            403,
        ),
        row("bob", "POST", "/v1/sessions/$glass/review", JSON, "{}", 400),
        row(
            "bob",
            "POST",
            "/v1/sessions/$open/review",
            JSON,
            REVIEW,
            409,
        ),
        row(
            "bob",
            "POST",
            "/v1/sessions/$glass/review",
            JSON,
            REVIEW,
            200,
        ),
        row(
            "bob",
            "POST",
            "/v1/sessions/$glass/review",
            JSON,
            REVIEW,
            409,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/certificate",
            JSON,
            r#"{"csr": "$csr"}"#,
            201,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/certificate",
            JSON,
            r#"{"csr": "garbage"}"#,
            400,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/certificate",
            "text/plain",
            "x",
            415,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/certificate",
            JSON,
            big.clone(),
            413,
        ),
        row(
            "alice",
            "POST",
            "/v1/sessions/$open/certificate",
            JSON,
            r#"{"csr": "$csr"}"#,
            404,
        ),
        row(
            "alice",
            "POST",
            "/v1/sessions/$pending/certificate",
            JSON,
            r#"{"csr": "$csr"}"#,
            409,
        ),
        row(
            "bob",
            "POST",
            "/v1/sessions/$open/certificate",
            JSON,
            r#"{"csr": "$csr"}"#,
            403,
        ),
        row("svc", "POST", "/v1/sessions/$open/token", "", "", 201),
        row(
            "gw",
            "POST",
            "/v1/sessions/$open/connections",
            JSON,
            CONNECTION,
            201,
        ),
        row(
            "gw",
            "POST",
            "/v1/sessions/$open/connections",
            JSON,
            CONNECTION,
            200,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/connections",
            JSON,
            CONNECTION,
            403,
        ),
        row(
            "gw",
            "POST",
            "/v1/sessions/$open/connections",
            JSON,
            CONNECTION.replace("$serial", "00ff"),
            400,
        ),
        row(
            "gw",
            "POST",
            "/v1/sessions/$open/connections",
            JSON,
            CONNECTION.replace("\"closed\"", "\"gone\""),
            400,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/token",
            JSON,
            r#"{"audience": 5}"#,
            400,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/token",
            "text/plain",
            "x",
            415,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/token",
            JSON,
            big.clone(),
            413,
        ),
        row("svc", "POST", "/v1/sessions/$to_close/token", "", "", 409),
        row(
            "alice",
            "POST",
            "/v1/sessions/$open/token",
            JSON,
            r#"{"audience": "elsewhere"}"#,
            404,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/token",
            JSON,
            r#"{"audience": "elsewhere"}"#,
            403,
        ),
        row("", "GET", "/v1/ca", "", "", 200),
        row("", "GET", "/v1/crl", "", "", 200),
        row("", "GET", "/v1/ssh/krl", "", "", 200),
        row("", "GET", "/v1/ssh/ca.pub", "", "", 200),
        row("", "GET", "/v1/tsa", "", "", 200),
        row(
            "bob",
            "POST",
            "/v1/sessions/$sign/signature",
            JSON,
            "$signature",
            403,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$open/signature",
            JSON,
            "$signature",
            403,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$sign/signature",
            JSON,
            r#"{"artifact_digest": "md5:00", "signature": "", "certificate": ""}"#,
            400,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$sign/signature",
            JSON,
            "$signature",
            201,
        ),
        row(
            "svc",
            "POST",
            "/v1/sessions/$sign/signature",
            JSON,
            "$signature",
            409,
        ),
        row("bob", "POST", "/v1/sessions/$ssh/ssh", JSON, SSH_KEY, 403),
        row("svc", "POST", "/v1/sessions/$open/ssh", JSON, SSH_KEY, 403),
        row(
            "svc",
            "POST",
            "/v1/sessions/$ssh/ssh",
            JSON,
            r#"{"public_key": "ssh-rsa AAAA"}"#,
            400,
        ),
        row("svc", "POST", "/v1/sessions/$ssh/ssh", JSON, SSH_KEY, 201),
        row("svc", "POST", "/v1/sessions/$ssh/ssh", JSON, SSH_KEY, 409),
        row(
            "",
            "POST",
            "/v1/ocsp",
            "application/ocsp-request",
            "garbage",
            200,
        ),
        row("", "GET", "/v1/ocsp/AAAA", "", "", 200),
        row(
            "ops",
            "POST",
            "/v1/introspect",
            "application/x-www-form-urlencoded",
            "token=$token",
            200,
        ),
        row(
            "ops",
            "POST",
            "/v1/introspect",
            JSON,
            r#"{"token": "$token"}"#,
            200,
        ),
        row("ops", "POST", "/v1/introspect", "text/plain", "token", 415),
        row("ops", "POST", "/v1/introspect", JSON, "{", 400),
        row("ops", "POST", "/v1/introspect", JSON, big, 413),
        row(
            "",
            "POST",
            "/v1/introspect",
            "application/x-www-form-urlencoded",
            "token=$token",
            401,
        ),
        row("auditor", "GET", "/v1/audit", "", "", 200),
        row(
            "auditor",
            "GET",
            "/v1/audit?session=ses_aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "",
            "",
            404,
        ),
        row("mallory", "GET", "/v1/audit", "", "", 403),
        row("", "GET", "/v1/audit", "", "", 401),
        row("auditor", "GET", "/v1/events", "", "", 200),
        row("auditor", "GET", "/v1/events?after=x", "", "", 400),
        row("mallory", "GET", "/v1/events", "", "", 403),
        row("", "GET", "/v1/events", "", "", 401),
        row("", "GET", "/.well-known/jwks.json", "", "", 200),
        row("", "GET", "/healthz", "", "", 200),
        row("", "GET", "/readyz", "", "", 200),
        row("metrics", "GET", "/metrics", "", "", 200),
        row("", "GET", "/metrics", "", "", 401),
        row("", "GET", "/openapi.json", "", "", 200),
    ]
}

/// The `[metrics] token` of the server whose calls are checked (caller
/// `metrics` in the table).
const METRICS_TOKEN: &str = "openapi-metrics-token";

/// A call as the checker reads it: method, path as sent, status, content
/// type, and the body as JSON (null when it is not JSON).
async fn call(
    srv: &TestServer,
    who: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: String,
) -> Value {
    let mut req = srv
        .http
        .request(method.parse().unwrap(), format!("{}{path}", srv.url));
    if who == "metrics" {
        req = req.bearer_auth(METRICS_TOKEN);
    } else if !who.is_empty() {
        req = req.bearer_auth(srv.token(who));
    }
    if !content_type.is_empty() {
        req = req.header("content-type", content_type);
    }
    if !body.is_empty() || method == "POST" {
        req = req.body(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // An event stream never ends: its headers are what is checked.
    let bytes = if content_type.starts_with("text/event-stream") {
        Default::default()
    } else {
        resp.bytes().await.unwrap()
    };
    json!({
        "method": method,
        "path": path,
        "status": status,
        "content_type": content_type,
        "body": serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
    })
}

/// `text` with every `$name` of `vars` replaced (longest names first).
fn fill(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    names.iter().fold(text.to_owned(), |t, n| {
        t.replace(&format!("${n}"), &vars[*n])
    })
}

/// Sessions in the states the table needs, a CSR and a minted token.
/// The issuer of the Shared Signals transmitter the calls push SETs from.
const TRANSMITTER: &str = "https://idp.test/ssf";

/// A SET from [`TRANSMITTER`], signed with its key in `keys` by PyJWT,
/// about a subject without sessions.
fn signed_set(keys: &str) -> String {
    let now = lockstep::clock::Clock::now(&lockstep::clock::SystemClock).unix();
    let request = json!({"claims": {
        "iss": TRANSMITTER, "aud": format!("{TRANSMITTER}/to-lockstep"), "iat": now, "jti": "openapi-1",
        "sub_id": {"format": "iss_sub", "iss": "https://idp.test", "sub": "nobody"},
        "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}},
    }});
    let out = common::python::check(
        "set_transmitter.py",
        &["sign", keys],
        request.to_string().as_bytes(),
    );
    out.trim().to_owned()
}

async fn setup(srv: &TestServer, keys: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for (name, who, resource) in [
        ("pending", "alice", "db:payroll"),
        ("to_deny", "alice", "db:payroll"),
        ("open", "svc", "api:one"),
        ("to_close", "svc", "api:two"),
        ("to_revoke", "svc", "api:three"),
    ] {
        let s = srv.request(who, resource, 600).await;
        if who == "svc" {
            assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
        }
        vars.insert(name.into(), s["id"].as_str().unwrap().to_owned());
        vars.insert(
            format!("{name}_hash"),
            s["request_hash"].as_str().unwrap().to_owned(),
        );
    }
    let body =
        json!({"resource": "ssh:one", "task": "t", "duration_secs": 600, "profile": "ssh-user"});
    let (status, s) = srv
        .call("POST", "/v1/sessions", Some("svc"), Some(body))
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    vars.insert("ssh".into(), s["id"].as_str().unwrap().to_owned());
    vars.insert("csr".into(), srv.csr("openapi").replace('\n', "\\n"));
    let (status, token) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{}/token", vars["open"]),
            Some("svc"),
            None,
        )
        .await;
    assert_eq!(status, 201, "{token}");
    vars.insert("token".into(), token["token"].as_str().unwrap().to_owned());
    let csr = srv.csr("openapi-gateway");
    let (status, cert) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{}/certificate", vars["open"]),
            Some("svc"),
            Some(json!({ "csr": csr })),
        )
        .await;
    assert_eq!(status, 201, "{cert}");
    vars.insert("serial".into(), cert["serial"].as_str().unwrap().to_owned());
    let glass: Value = serde_json::from_str(GLASS).unwrap();
    let (status, s) = srv
        .call("POST", "/v1/sessions", Some("svc"), Some(glass))
        .await;
    assert_eq!(status, 201, "{s}");
    vars.insert("glass".into(), s["id"].as_str().unwrap().to_owned());
    vars.insert("set".into(), signed_set(keys));
    let (id, signature) = signing_session(srv).await;
    vars.insert("sign".into(), id);
    vars.insert("signature".into(), signature);
    vars
}

/// An open code-signing session, and the body of a valid signature
/// request for it (its certificate, an artifact signed with its key).
async fn signing_session(srv: &TestServer) -> (String, String) {
    let body = json!({"resource": "release:app", "task": "t", "duration_secs": 600, "profile": "code-signing"});
    let (status, s) = srv
        .call("POST", "/v1/sessions", Some("svc"), Some(body))
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    let id = s["id"].as_str().unwrap().to_owned();
    let csr = srv.csr(&format!("openapi-{id}"));
    let (status, cert) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/certificate"),
            Some("svc"),
            Some(json!({ "csr": csr })),
        )
        .await;
    assert_eq!(status, 201, "{cert}");
    let key = srv.dir.path().join(format!("openapi-{id}.key"));
    let sig = common::openssl_sign(srv.dir.path(), &key, b"an artifact");
    use base64::Engine;
    let body = json!({
        "artifact_digest": format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"an artifact"))),
        "signature": base64::engine::general_purpose::STANDARD.encode(sig),
        "certificate": cert["certificate"],
    });
    (id, body.to_string())
}

/// The operations of the document: (METHOD, path) → operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.insert((method.to_ascii_uppercase(), path.clone()), op.clone());
        }
    }
    out
}

/// The documented query parameters of `op`: name → schema type.
fn query_parameters(op: &Value) -> BTreeMap<String, String> {
    op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query")
        .map(|p| {
            let ty = match &p["schema"]["type"] {
                Value::Array(types) => types.iter().find(|t| *t != "null").cloned(),
                t => Some(t.clone()),
            };
            (
                p["name"].as_str().unwrap().to_owned(),
                ty.and_then(|t| t.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The documented operation whose template `path` (no query) matches.
fn template_of<'a>(
    ops: &'a BTreeMap<(String, String), Value>,
    method: &str,
    path: &str,
) -> Option<&'a (String, String)> {
    let segments: Vec<&str> = path.split('/').collect();
    ops.keys().find(|(m, template)| {
        let t: Vec<&str> = template.split('/').collect();
        m == method
            && t.len() == segments.len()
            && t.iter()
                .zip(&segments)
                .all(|(a, b)| a == b || (a.starts_with('{') && !b.is_empty()))
    })
}

async fn served_document(srv: &TestServer) -> Value {
    let (status, doc) = srv.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    doc
}

/// Runs tests/python/openapi_check.py on `doc` (and `calls`); returns
/// what it printed.
async fn openapi_check(doc: &Value, calls: Option<&[Value]>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let mut args = vec![doc_path.to_str().unwrap().to_owned()];
    if let Some(calls) = calls {
        let calls_path = dir.path().join("calls.json");
        std::fs::write(&calls_path, serde_json::to_vec_pretty(calls).unwrap()).unwrap();
        args.push(calls_path.to_str().unwrap().to_owned());
    }
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::python::check("openapi_check.py", &args, b"")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_is_valid_openapi_3_1() {
    let srv = TestServer::start("openapi-valid", POLICY, &[], "").await;
    let doc = served_document(&srv).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let out = openapi_check(&doc, None).await;
    eprintln!("{out}");
    assert!(out.contains("valid (openapi-spec-validator)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_answer_as_documented() {
    let metrics_dir = tempfile::tempdir().unwrap();
    let token = common::write(metrics_dir.path(), "metrics.token", METRICS_TOKEN);
    let signals = tempfile::tempdir().unwrap();
    let keys = signals.path().to_str().unwrap();
    common::python::check("set_transmitter.py", &["keygen", keys], b"");
    let extra = format!(
        "[metrics]\ntoken = \"file:{}\"\n\n[[transmitter]]\nissuer = \"{TRANSMITTER}\"\n\
         audience = \"{TRANSMITTER}/to-lockstep\"\njwks = \"file:{keys}/jwks.json\"\n",
        token.display()
    );
    let srv = TestServer::start("openapi-calls", POLICY, CALLERS, &extra).await;
    let doc = served_document(&srv).await;
    let ops = operations(&doc);
    let vars = setup(&srv, keys).await;
    let mut calls = Vec::new();
    let mut wrong = Vec::new();

    // The table.
    for r in table() {
        let path = fill(r.path, &vars);
        let c = call(
            &srv,
            r.who,
            r.method,
            &path,
            r.content_type,
            fill(&r.body, &vars),
        )
        .await;
        if c["status"] != r.status {
            wrong.push(format!(
                "{} {} as {:?}: {} (want {})",
                r.method, r.path, r.who, c["status"], r.status
            ));
        }
        calls.push(c);
    }

    // Query parameters: a value of each one's type for each documented
    // one, as someone who may call the operation.
    let cursor = {
        let (_, page) = srv
            .call("GET", "/v1/sessions?limit=1", Some("alice"), None)
            .await;
        page["next_before"].as_str().unwrap().to_owned()
    };
    let valid: BTreeMap<(&str, &str), (&str, String)> = [
        (("/v1/sessions", "state"), ("alice", "pending".to_owned())),
        (("/v1/sessions", "limit"), ("alice", "1".to_owned())),
        (("/v1/sessions", "before"), ("alice", cursor)),
        (("/v1/sessions", "unreviewed"), ("bob", "true".to_owned())),
        (("/v1/audit", "session"), ("auditor", vars["open"].clone())),
        (("/v1/audit", "after"), ("auditor", "1".to_owned())),
        (("/v1/audit", "limit"), ("auditor", "5".to_owned())),
        (("/v1/events", "after"), ("auditor", "1".to_owned())),
        (("/v1/events", "resource"), ("auditor", "db:*".to_owned())),
    ]
    .into_iter()
    .collect();
    let mut with_query = BTreeSet::new();
    for ((method, path), op) in &ops {
        let params = query_parameters(op);
        if params.is_empty() {
            continue;
        }
        with_query.insert((method.clone(), path.clone()));
        let mut who = "";
        for (name, ty) in &params {
            let Some((caller, value)) = valid.get(&(path.as_str(), name.as_str())) else {
                wrong.push(format!(
                    "{method} {path}: no test value for query parameter {name}"
                ));
                continue;
            };
            who = caller;
            let c = call(
                &srv,
                caller,
                method,
                &format!("{path}?{name}={value}"),
                "",
                String::new(),
            )
            .await;
            if c["status"] != 200 {
                wrong.push(format!(
                    "{method} {path}?{name}={value}: {} (want 200)",
                    c["status"]
                ));
            }
            calls.push(c);
            if ty == "integer" {
                let c = call(
                    &srv,
                    caller,
                    method,
                    &format!("{path}?{name}=x"),
                    "",
                    String::new(),
                )
                .await;
                if c["status"] != 400 || c["body"]["error"] != "invalid_request" {
                    wrong.push(format!(
                        "{method} {path}?{name}=x: {c} (want 400 invalid_request)"
                    ));
                }
                calls.push(c);
            }
        }
        let all: Vec<String> = params
            .keys()
            .filter_map(|n| {
                valid
                    .get(&(path.as_str(), n.as_str()))
                    .map(|(_, v)| format!("{n}={v}"))
            })
            .collect();
        for query in [all.join("&"), "unknown=1".to_owned()] {
            let c = call(
                &srv,
                who,
                method,
                &format!("{path}?{query}"),
                "",
                String::new(),
            )
            .await;
            let want = if query == "unknown=1" { 400 } else { 200 };
            if c["status"] != want {
                wrong.push(format!(
                    "{method} {path}?{query}: {} (want {want})",
                    c["status"]
                ));
            }
            calls.push(c);
        }
    }
    for (m, p) in valid
        .keys()
        .map(|(p, _)| ("GET".to_owned(), (*p).to_owned()))
    {
        assert!(
            with_query.contains(&(m.clone(), p.clone())),
            "{m} {p} documents no query parameters"
        );
    }

    // Operations without query parameters ignore a query string: each GET
    // of the table answers the same with one.
    for r in table().iter().filter(|r| r.method == "GET") {
        let path = fill(r.path, &vars);
        let Some(key) = template_of(&ops, r.method, path.split('?').next().unwrap()) else {
            continue;
        };
        if with_query.contains(key) || path.contains('?') {
            continue;
        }
        let c = call(
            &srv,
            r.who,
            r.method,
            &format!("{path}?unknown=1"),
            "",
            String::new(),
        )
        .await;
        if c["status"] != r.status {
            wrong.push(format!(
                "{} {path}?unknown=1: {} (want {}, as without)",
                r.method, c["status"], r.status
            ));
        }
        calls.push(c);
    }

    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    let out = openapi_check(&doc, Some(&calls)).await;
    eprintln!("{out}");
}
