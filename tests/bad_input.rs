//! Bad input over real HTTPS, table-driven: every row is one request
//! (method, raw path, headers, body) with the status and JSON `error` code
//! the README documents. After every row the store is compared with a
//! snapshot taken before it: sessions, their credentials and every audit
//! entry but `refused` ones must be exactly as they were.
//!
//! Requests are written by hand over TLS, not through an HTTP client
//! library, so paths reach the server as sent (no `..` normalisation) and
//! headers can be anything.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use lockstep::clock::{Clock, SystemClock};
use lockstep::store::{SessionFilter, SqliteStore, Store};
use rustls::pki_types::ServerName;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::oidc::TestIssuer;
use common::server::TestServer;
use common::{openssl, openssl_csr, write};

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
credentials = 3

[[resource]]
match = "release:acme/*"
requesters = ["token:svc"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["code-signing"]
"#;

const CALLERS: &[&str] = &["alice", "bob", "carol", "ops", "auditor", "mallory", "svc"];

/// The audience lockstep expects in OIDC tokens here.
const AUDIENCE: &str = "https://lockstep.test";

/// Who a row authenticates as.
#[derive(Clone)]
enum Auth {
    /// No `Authorization` header.
    None,
    /// `Bearer <API token of this caller>`.
    Caller(&'static str),
    /// `Bearer <this>`.
    Bearer(String),
    /// This exact header value.
    Header(Vec<u8>),
}

/// One request and what must come back.
struct Row {
    /// The input class, for the summary.
    class: &'static str,
    what: String,
    method: &'static str,
    path: String,
    auth: Auth,
    content_type: Option<String>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

/// Rows are built with [`rows`] helpers; the table is a plain `Vec<Row>`.
struct Table {
    rows: Vec<Row>,
    class: &'static str,
}

impl Table {
    fn class(&mut self, class: &'static str) {
        self.class = class;
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        what: impl Into<String>,
        method: &'static str,
        path: impl Into<String>,
        auth: Auth,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
        status: u16,
        code: &'static str,
    ) {
        self.rows.push(Row {
            class: self.class,
            what: what.into(),
            method,
            path: path.into(),
            auth,
            content_type: content_type.map(str::to_owned),
            body: body.into(),
            status,
            code,
        });
    }

    /// A JSON body (sent as given, so it may be malformed) as a caller.
    #[allow(clippy::too_many_arguments)]
    fn json(
        &mut self,
        what: impl Into<String>,
        method: &'static str,
        path: impl Into<String>,
        caller: &'static str,
        body: impl Into<Vec<u8>>,
        status: u16,
        code: &'static str,
    ) {
        self.push(
            what,
            method,
            path,
            Auth::Caller(caller),
            Some("application/json"),
            body,
            status,
            code,
        );
    }

    /// `POST /v1/sessions` as `alice` with this JSON text.
    fn request(
        &mut self,
        what: impl Into<String>,
        body: impl Into<Vec<u8>>,
        status: u16,
        code: &'static str,
    ) {
        self.json(what, "POST", "/v1/sessions", "alice", body, status, code);
    }

    /// `POST /v1/sessions` as `alice` with `ok` changed by `edit`.
    fn request_with(
        &mut self,
        what: impl Into<String>,
        edit: impl FnOnce(&mut Value),
        status: u16,
        code: &'static str,
    ) {
        let mut body = ok_request();
        edit(&mut body);
        self.request(what, body.to_string(), status, code);
    }

    /// An authentication row: `POST /v1/sessions` with a valid body.
    fn auth(&mut self, what: impl Into<String>, auth: Auth) {
        self.push(
            what,
            "POST",
            "/v1/sessions",
            auth,
            Some("application/json"),
            ok_request().to_string(),
            401,
            "unauthenticated",
        );
    }
}

/// A request alice may make (the table never sends it unchanged).
fn ok_request() -> Value {
    json!({"resource": "db:payroll", "task": "rotate the password", "duration_secs": 60, "profile": "mtls-client"})
}

/// What must not change: sessions, credentials, audit entries but refusals.
#[derive(Debug, PartialEq)]
struct Snapshot {
    sessions: Vec<String>,
    credentials: BTreeMap<String, Vec<String>>,
    audit: Vec<(u64, String, String)>,
    refused: usize,
}

async fn snapshot(store: &SqliteStore) -> Snapshot {
    let sessions = store
        .sessions(SessionFilter {
            limit: 100_000,
            ..SessionFilter::default()
        })
        .await
        .unwrap();
    let mut credentials = BTreeMap::new();
    for s in &sessions {
        let creds = store.credentials(&s.id).await.unwrap();
        credentials.insert(
            s.id.to_string(),
            creds.iter().map(|c| format!("{c:?}")).collect(),
        );
    }
    let entries = store.audit_entries(0, 1_000_000, None).await.unwrap();
    let refused = entries.iter().filter(|e| e.kind == "refused").count();
    Snapshot {
        sessions: sessions.iter().map(|s| format!("{s:?}")).collect(),
        credentials,
        audit: entries
            .into_iter()
            .filter(|e| e.kind != "refused")
            .map(|e| (e.seq, e.kind, e.body))
            .collect(),
        refused,
    }
}

/// A response as read off the wire.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// HTTP/1.1 over TLS, written by hand: the path and headers go out as given.
struct Wire {
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl Wire {
    fn new(srv: &TestServer) -> Self {
        let config = rustls::ClientConfig::builder_with_provider(common::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(common::tls::roots(&srv.root_pem()))
            .with_no_client_auth();
        Self {
            addr: srv.addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&[u8]>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = self.tls.connect(name, tcp).await.unwrap();
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n")
                .into_bytes();
        if let Some(a) = authorization {
            head.extend_from_slice(b"authorization: ");
            head.extend_from_slice(a);
            head.extend_from_slice(b"\r\n");
        }
        if let Some(ct) = content_type {
            head.extend_from_slice(format!("content-type: {ct}\r\n").as_bytes());
        }
        if method != "GET" || !body.is_empty() {
            head.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        tls.write_all(&head).await.unwrap();
        // The server may answer (413) and close before reading it all.
        let _ = tls.write_all(body).await;
        let _ = tls.flush().await;
        let mut raw = Vec::new();
        // A reset after a complete answer is fine; what was read counts.
        let _ = tls.read_to_end(&mut raw).await;
        parse_answer(&raw).unwrap_or_else(|| {
            panic!(
                "{method} {}: no HTTP answer: {:?}",
                path.chars().take(80).collect::<String>(),
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            )
        })
    }
}

fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut content_type = String::new();
    let mut chunked = false;
    for line in lines {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        match k.to_ascii_lowercase().as_str() {
            "content-type" => content_type = v.to_owned(),
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let mut body = raw[end + 4..].to_vec();
    if chunked {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&rest[..eol]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some(Answer {
        status,
        content_type,
        body,
    })
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(pem).unwrap();
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).unwrap()
}

fn der_to_pem(der: &[u8], label: &str) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A CSR for an existing key, made by openssl with `args` added.
fn csr_for_key(dir: &Path, name: &str, key: &Path, args: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("{name}.csr"));
    let mut all = vec![
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/CN=bad-input",
        "-out",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let (ok, text) = openssl(&all);
    assert!(ok, "openssl req {name}: {text}");
    std::fs::read(out).unwrap()
}

/// A P-256 CSR (DER) carrying `n` private extensions.
fn csr_with_extensions(dir: &Path, key: &Path, n: usize) -> Vec<u8> {
    let mut cnf = String::from(
        "[req]\ndistinguished_name = dn\nreq_extensions = ext\nprompt = no\n[dn]\nCN = x\n[ext]\n",
    );
    for i in 1..=n {
        cnf.push_str(&format!("1.2.{i} = ASN1:NULL\n"));
    }
    let cnf = write(dir, &format!("ext{n}.cnf"), cnf);
    let out = dir.join(format!("ext{n}.der"));
    let (ok, text) = openssl(&[
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-config",
        cnf.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "openssl req with {n} extensions: {text}");
    std::fs::read(out).unwrap()
}

/// The byte offset of the signature BIT STRING's last byte is the last
/// byte of the DER; flipping it breaks the signature and nothing else.
fn flip_last_bit(der: &[u8]) -> Vec<u8> {
    let mut d = der.to_vec();
    *d.last_mut().unwrap() ^= 0x01;
    d
}

/// `header.payload.signature` from JSON parts and raw signature bytes.
fn jwt(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A table row's expectation, checked; returns the failure, if any.
fn check(row: &Row, answer: &Answer) -> Option<String> {
    let json: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let what = format!(
        "[{}] {} ({} {})",
        row.class,
        row.what,
        row.method,
        row.path.chars().take(60).collect::<String>()
    );
    if answer.status != row.status || json["error"].as_str() != Some(row.code) {
        return Some(format!(
            "{what}: want {} {}, got {} {}",
            row.status,
            row.code,
            answer.status,
            String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
        ));
    }
    if !answer.content_type.starts_with("application/json") {
        return Some(format!(
            "{what}: content type `{}` is not JSON",
            answer.content_type
        ));
    }
    let Some(message) = json["message"].as_str().filter(|m| !m.is_empty()) else {
        return Some(format!("{what}: no message in {json}"));
    };
    // A message explains; it never echoes a large input back.
    if message.len() > 600 {
        return Some(format!(
            "{what}: message of {} bytes: {}…",
            message.len(),
            &message[..200]
        ));
    }
    if let Auth::Bearer(token) = &row.auth
        && token.len() > 16
        && message.contains(token.as_str())
    {
        return Some(format!("{what}: the message quotes the token"));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_its_code_and_changes_nothing() {
    let idp = TestIssuer::start().await;
    let other_idp = TestIssuer::start().await;
    let oidc = format!(
        "[[auth.oidc]]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\njwks = \"{}\"\nleeway = \"30s\"\n",
        idp.issuer(),
        idp.jwks_url()
    );
    let srv = TestServer::start("bad-input", POLICY, CALLERS, &oidc).await;
    let dir = srv.dir.path().to_owned();
    let wire = Wire::new(&srv);

    // A pending session (alice's) and an open one (svc's, 3 credentials).
    let (status, pending) = srv
        .call("POST", "/v1/sessions", Some("alice"), Some(ok_request()))
        .await;
    assert_eq!(status, 201, "{pending}");
    let pid = pending["id"].as_str().unwrap().to_owned();
    let phash = pending["request_hash"].as_str().unwrap().to_owned();
    let (status, open) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some("svc"),
            Some(json!({"resource": "api:billing", "task": "deploy", "duration_secs": 600, "profile": "mtls-client"})),
        )
        .await;
    assert_eq!(status, 201, "{open}");
    let oid = open["id"].as_str().unwrap().to_owned();
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{oid}/approve"),
            Some("bob"),
            Some(json!({"request_hash": open["request_hash"]})),
        )
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("open")),
        "{body}"
    );

    // Valid OIDC tokens authenticate, so the refusals below are the token's
    // fault and not the set-up's.
    let good_oidc = idp.token("repo:acme/app", AUDIENCE, Value::Null, 300);
    let answer = wire
        .send(
            "GET",
            "/v1/sessions",
            Some(format!("Bearer {good_oidc}").as_bytes()),
            None,
            b"",
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );

    // CSRs, made by openssl.
    let (ec_key, good_pem) = openssl_csr(&dir, "p256", "ec:P-256");
    let good_der = pem_to_der(&good_pem);
    let (_, other_pem) = openssl_csr(&dir, "p256b", "ec:P-256");
    let other_der = pem_to_der(&other_pem);
    let unsupported: Vec<(&str, Vec<u8>)> = vec![
        ("Ed25519", openssl_csr(&dir, "ed25519", "ed25519").1),
        ("Ed448", openssl_csr(&dir, "ed448", "ed448").1),
        ("EC P-521", openssl_csr(&dir, "p521", "ec:P-521").1),
        ("EC secp256k1", openssl_csr(&dir, "k256", "ec:secp256k1").1),
        ("RSA 1024", openssl_csr(&dir, "rsa1024", "rsa:1024").1),
        ("RSA-PSS key", openssl_csr(&dir, "rsapss", "rsa-pss").1),
        ("DSA 2048", {
            let params = dir.join("dsa.params");
            let key = dir.join("dsa.key");
            let (ok, text) = openssl(&[
                "genpkey",
                "-genparam",
                "-algorithm",
                "DSA",
                "-pkeyopt",
                "dsa_paramgen_bits:2048",
                "-out",
                params.to_str().unwrap(),
            ]);
            assert!(ok, "{text}");
            let (ok, text) = openssl(&[
                "genpkey",
                "-paramfile",
                params.to_str().unwrap(),
                "-out",
                key.to_str().unwrap(),
            ]);
            assert!(ok, "{text}");
            csr_for_key(&dir, "dsa", &key, &[])
        }),
    ];
    let (rsa_key, _) = openssl_csr(&dir, "rsa2048", "rsa:2048");
    let rsa_sha1 = csr_for_key(&dir, "rsa-sha1", &rsa_key, &["-sha1"]);
    let ec_sha512 = csr_for_key(&dir, "ec-sha512", &ec_key, &["-sha512"]);
    let ec_sha1 = csr_for_key(&dir, "ec-sha1", &ec_key, &["-sha1"]);
    let many_ext = csr_with_extensions(&dir, &ec_key, 1200);
    assert!(
        many_ext.len() < 16 * 1024,
        "{} bytes: under the cap",
        many_ext.len()
    );
    let too_many_ext = csr_with_extensions(&dir, &ec_key, 4000);
    assert!(too_many_ext.len() > 16 * 1024 && too_many_ext.len() < 60_000);
    let root_pem = std::fs::read_to_string(srv.root_pem()).unwrap();

    let mut t = Table {
        rows: Vec::new(),
        class: "",
    };
    let sessions = "/v1/sessions";
    let cert_o = format!("/v1/sessions/{oid}/certificate");
    let cert_p = format!("/v1/sessions/{pid}/certificate");
    let approve_p = format!("/v1/sessions/{pid}/approve");
    let deny_p = format!("/v1/sessions/{pid}/deny");
    let revoke_p = format!("/v1/sessions/{pid}/revoke");
    let token_o = format!("/v1/sessions/{oid}/token");

    // --- Malformed JSON ---------------------------------------------------
    t.class("malformed JSON");
    for (what, body) in [
        ("unterminated object", "{\"resource\": "),
        ("empty body", ""),
        ("only whitespace", "   \n"),
        ("single quotes", "{'resource': 'db:payroll'}"),
        ("unquoted key", "{resource: \"db:payroll\"}"),
        (
            "trailing comma",
            "{\"resource\": \"db:payroll\", \"task\": \"t\", \"duration_secs\": 60, \"profile\": \"mtls-client\",}",
        ),
        ("comment", "/* hi */ {\"resource\": \"db:payroll\"}"),
        (
            "lone surrogate escape",
            "{\"resource\": \"db:\\ud800\", \"task\": \"t\", \"duration_secs\": 60, \"profile\": \"mtls-client\"}",
        ),
        ("bad escape", "{\"resource\": \"db:\\x41\"}"),
        (
            "NaN",
            "{\"resource\": \"db:payroll\", \"task\": \"t\", \"duration_secs\": NaN, \"profile\": \"mtls-client\"}",
        ),
        (
            "raw control character in a string",
            "{\"resource\": \"db:payroll\", \"task\": \"a\u{1}b\", \"duration_secs\": 60, \"profile\": \"mtls-client\"}",
        ),
    ] {
        t.request(what, body, 400, "invalid_json");
    }
    t.request("invalid UTF-8", b"{\"resource\": \"db:\xff\xfe\", \"task\": \"t\", \"duration_secs\": 60, \"profile\": \"mtls-client\"}".to_vec(), 400, "invalid_json");
    t.request(
        "UTF-8 byte order mark",
        [
            b"\xef\xbb\xbf".as_slice(),
            ok_request().to_string().as_bytes(),
        ]
        .concat(),
        400,
        "invalid_json",
    );
    t.json(
        "unterminated vote",
        "POST",
        &approve_p,
        "bob",
        "{\"request_hash\": ",
        400,
        "invalid_json",
    );
    t.json(
        "unterminated revoke",
        "POST",
        &revoke_p,
        "ops",
        "{\"reason\"",
        400,
        "invalid_json",
    );
    t.json(
        "unterminated CSR body",
        "POST",
        &cert_o,
        "svc",
        "{\"csr\": \"-----BEGIN",
        400,
        "invalid_json",
    );
    t.json(
        "unterminated token body",
        "POST",
        &token_o,
        "svc",
        "{\"audience\": ",
        400,
        "invalid_json",
    );
    t.json(
        "unterminated introspection body",
        "POST",
        "/v1/introspect",
        "svc",
        "{\"token\": ",
        400,
        "invalid_json",
    );

    // --- Trailing garbage -------------------------------------------------
    t.class("trailing garbage");
    let ok = ok_request().to_string();
    for (what, tail) in [
        ("a word", " x"),
        ("a second object", "{}"),
        ("a NUL byte", "\0"),
        ("a closing brace", "}"),
        ("a comma and more", ",{\"a\":1}"),
    ] {
        t.request(what, format!("{ok}{tail}"), 400, "invalid_json");
    }
    t.json(
        "after a vote",
        "POST",
        &approve_p,
        "bob",
        format!("{{\"request_hash\": \"{phash}\"}} trailing"),
        400,
        "invalid_json",
    );
    t.json(
        "after a CSR body",
        "POST",
        &cert_o,
        "svc",
        format!("{} x", json!({"csr": String::from_utf8_lossy(&good_pem)})),
        400,
        "invalid_json",
    );
    t.json(
        "after a token body",
        "POST",
        &token_o,
        "svc",
        "{} []",
        400,
        "invalid_json",
    );

    // --- Unknown fields -----------------------------------------------------
    t.class("unknown fields");
    t.request_with(
        "an extra field",
        |b| b["extra"] = json!(1),
        400,
        "invalid_request",
    );
    t.request_with(
        "a field in other case",
        |b| b["Resource"] = json!("db:payroll"),
        400,
        "invalid_request",
    );
    t.request_with(
        "a tenant the caller picks",
        |b| b["tenant"] = json!("acme"),
        400,
        "invalid_request",
    );
    t.request_with(
        "a requester the caller picks",
        |b| b["requester"] = json!("token:bob"),
        400,
        "invalid_request",
    );
    t.request_with(
        "an empty key",
        |b| b[""] = json!(null),
        400,
        "invalid_request",
    );
    t.json(
        "an extra field in a vote",
        "POST",
        &approve_p,
        "bob",
        json!({"request_hash": phash, "approve": true}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "a reason with an approval",
        "POST",
        &approve_p,
        "bob",
        json!({"request_hash": phash, "reason": "ok"}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "an extra field in a denial",
        "POST",
        &deny_p,
        "bob",
        json!({"request_hash": phash, "reason": "no", "quorum": 0}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "an extra field in a revocation",
        "POST",
        &revoke_p,
        "ops",
        json!({"reason": "x", "at": 0}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "an extra field with a CSR",
        "POST",
        &cert_o,
        "svc",
        json!({"csr": String::from_utf8_lossy(&good_pem), "subject": "CN=admin"}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "an extra field in a token request",
        "POST",
        &token_o,
        "svc",
        json!({"audience": "api:billing", "exp": 9_999_999_999u64}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "a missing field",
        "POST",
        sessions,
        "alice",
        json!({"resource": "db:payroll", "task": "t", "duration_secs": 60}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "an empty object",
        "POST",
        sessions,
        "alice",
        "{}",
        400,
        "invalid_request",
    );
    t.json(
        "an empty vote",
        "POST",
        &approve_p,
        "bob",
        "{}",
        400,
        "invalid_request",
    );
    t.json(
        "an empty CSR body",
        "POST",
        &cert_o,
        "svc",
        "{}",
        400,
        "invalid_request",
    );

    // --- Content types --------------------------------------------------------
    t.class("content types");
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        Some("json"),
        Some("application/xml"),
        Some("application/pkcs10"),
        Some(""),
    ] {
        t.push(
            format!("request as {ct:?}"),
            "POST",
            sessions,
            Auth::Caller("alice"),
            ct,
            ok.clone(),
            415,
            "unsupported_media_type",
        );
    }
    t.push(
        "vote as text/plain",
        "POST",
        &approve_p,
        Auth::Caller("bob"),
        Some("text/plain"),
        json!({"request_hash": phash}).to_string(),
        415,
        "unsupported_media_type",
    );
    t.push(
        "vote without a type",
        "POST",
        &approve_p,
        Auth::Caller("bob"),
        None,
        json!({"request_hash": phash}).to_string(),
        415,
        "unsupported_media_type",
    );
    t.push(
        "revocation as form",
        "POST",
        &revoke_p,
        Auth::Caller("ops"),
        Some("application/x-www-form-urlencoded"),
        "reason=x",
        415,
        "unsupported_media_type",
    );
    t.push(
        "CSR JSON as text/plain",
        "POST",
        &cert_o,
        Auth::Caller("svc"),
        Some("text/plain"),
        json!({"csr": String::from_utf8_lossy(&good_pem)}).to_string(),
        415,
        "unsupported_media_type",
    );
    t.push(
        "CSR without a type",
        "POST",
        &cert_o,
        Auth::Caller("svc"),
        None,
        good_pem.clone(),
        415,
        "unsupported_media_type",
    );
    t.push(
        "CSR as application/x-pem-file",
        "POST",
        &cert_o,
        Auth::Caller("svc"),
        Some("application/x-pem-file"),
        good_pem.clone(),
        415,
        "unsupported_media_type",
    );
    t.push(
        "introspection as text/plain",
        "POST",
        "/v1/introspect",
        Auth::Caller("svc"),
        Some("text/plain"),
        "token=x",
        415,
        "unsupported_media_type",
    );
    t.push(
        "introspection without a type",
        "POST",
        "/v1/introspect",
        Auth::Caller("svc"),
        None,
        "token=x",
        415,
        "unsupported_media_type",
    );
    t.push(
        "token request as text/plain",
        "POST",
        &token_o,
        Auth::Caller("svc"),
        Some("text/plain"),
        "{\"audience\": \"api:billing\"}",
        415,
        "unsupported_media_type",
    );

    // --- Bodies over the limit (65536 bytes here) ---------------------------
    t.class("body over the limit");
    let big = |n: usize| {
        json!({"resource": "db:payroll", "task": "x".repeat(n), "duration_secs": 60, "profile": "mtls-client"}).to_string()
    };
    t.request("task of 70 kB", big(70_000), 413, "body_too_large");
    t.request("task of 1 MB", big(1_000_000), 413, "body_too_large");
    t.request("resource of 1 MB", json!({"resource": "a".repeat(1_000_000), "task": "t", "duration_secs": 60, "profile": "mtls-client"}).to_string(), 413, "body_too_large");
    t.json(
        "denial reason of 1 MB",
        "POST",
        &deny_p,
        "bob",
        json!({"request_hash": phash, "reason": "r".repeat(1_000_000)}).to_string(),
        413,
        "body_too_large",
    );
    t.json(
        "revocation reason of 1 MB",
        "POST",
        &revoke_p,
        "ops",
        json!({"reason": "r".repeat(1_000_000)}).to_string(),
        413,
        "body_too_large",
    );
    t.push(
        "raw CSR of 70 kB",
        "POST",
        &cert_o,
        Auth::Caller("svc"),
        Some("application/pkcs10"),
        vec![0x30; 70_000],
        413,
        "body_too_large",
    );
    t.json(
        "CSR JSON of 70 kB",
        "POST",
        &cert_o,
        "svc",
        json!({"csr": "A".repeat(70_000)}).to_string(),
        413,
        "body_too_large",
    );
    t.json(
        "token request of 70 kB",
        "POST",
        &token_o,
        "svc",
        json!({"audience": "a".repeat(70_000)}).to_string(),
        413,
        "body_too_large",
    );
    t.json(
        "introspection of 70 kB",
        "POST",
        "/v1/introspect",
        "svc",
        json!({"token": "a".repeat(70_000)}).to_string(),
        413,
        "body_too_large",
    );
    t.push(
        "introspection form of 70 kB",
        "POST",
        "/v1/introspect",
        Auth::Caller("svc"),
        Some("application/x-www-form-urlencoded"),
        format!("token={}", "a".repeat(70_000)),
        413,
        "body_too_large",
    );

    // --- Deeply nested JSON ----------------------------------------------------
    t.class("deep nesting");
    // Within serde_json's depth limit (128) a wrong shape is a wrong
    // field; beyond it the body is not taken for JSON at all.
    for depth in [10, 129, 1_000, 8_000] {
        let code = if depth < 128 {
            "invalid_request"
        } else {
            "invalid_json"
        };
        t.request(
            format!("arrays {depth} deep"),
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
            400,
            code,
        );
        t.request(
            format!("task {depth} objects deep"),
            format!(
                "{{\"resource\": \"db:payroll\", \"duration_secs\": 60, \"profile\": \"mtls-client\", \"task\": {}1{}}}",
                "{\"a\":".repeat(depth),
                "}".repeat(depth)
            ),
            400,
            code,
        );
    }
    t.request("unclosed nesting", "[".repeat(60_000), 400, "invalid_json");
    t.json(
        "unclosed nesting in an ignored field",
        "POST",
        "/v1/introspect",
        "svc",
        format!("{{\"token\": \"x\", \"hint\": {}", "{\"a\":".repeat(10_000)),
        400,
        "invalid_json",
    );
    t.json(
        "nested token request",
        "POST",
        &token_o,
        "svc",
        format!(
            "{{\"audience\": {}\"a\"{}}}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        ),
        400,
        "invalid_json",
    );

    // --- Duplicate keys ----------------------------------------------------------
    t.class("duplicate keys");
    t.request("resource twice", "{\"resource\": \"db:payroll\", \"resource\": \"db:other\", \"task\": \"t\", \"duration_secs\": 60, \"profile\": \"mtls-client\"}", 400, "invalid_request");
    t.request("duration twice", "{\"resource\": \"db:payroll\", \"task\": \"t\", \"duration_secs\": 60, \"duration_secs\": 900000, \"profile\": \"mtls-client\"}", 400, "invalid_request");
    t.request("profile twice", "{\"resource\": \"db:payroll\", \"task\": \"t\", \"duration_secs\": 60, \"profile\": \"mtls-client\", \"profile\": \"code-signing\"}", 400, "invalid_request");
    t.json(
        "hash twice",
        "POST",
        &approve_p,
        "bob",
        format!("{{\"request_hash\": \"{phash}\", \"request_hash\": \"{phash}\"}}"),
        400,
        "invalid_request",
    );
    t.json(
        "csr twice",
        "POST",
        &cert_o,
        "svc",
        format!(
            "{{\"csr\": \"x\", \"csr\": {}}}",
            json!(String::from_utf8_lossy(&good_pem))
        ),
        400,
        "invalid_request",
    );
    t.json(
        "audience twice",
        "POST",
        &token_o,
        "svc",
        "{\"audience\": \"api:billing\", \"audience\": \"x\"}",
        400,
        "invalid_request",
    );

    // --- Wrong JSON types -----------------------------------------------------------
    t.class("wrong JSON types");
    for (field, value) in [
        ("resource", json!(1)),
        ("resource", json!(["db:payroll"])),
        ("resource", json!(null)),
        ("resource", json!({"name": "db:payroll"})),
        ("task", json!(true)),
        ("task", json!(["t"])),
        ("profile", json!(null)),
        ("profile", json!(1)),
        ("request_digest", json!(5)),
        ("request_digest", json!(["sha256:00"])),
        ("duration_secs", json!("60")),
        ("duration_secs", json!(null)),
        ("duration_secs", json!([60])),
        ("duration_secs", json!(true)),
    ] {
        t.request_with(
            format!("{field} = {value}"),
            |b| b[field] = value.clone(),
            400,
            "invalid_request",
        );
    }
    for body in ["null", "[]", "\"db:payroll\"", "60", "true"] {
        t.request(format!("body {body}"), body, 400, "invalid_request");
    }
    t.json(
        "hash as a number",
        "POST",
        &approve_p,
        "bob",
        "{\"request_hash\": 1}",
        400,
        "invalid_request",
    );
    t.json(
        "hash as an array",
        "POST",
        &approve_p,
        "bob",
        json!({"request_hash": [phash]}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "reason as an object",
        "POST",
        &revoke_p,
        "ops",
        "{\"reason\": {\"a\": 1}}",
        400,
        "invalid_request",
    );
    t.json(
        "reason code unknown",
        "POST",
        &revoke_p,
        "ops",
        "{\"reason\": \"x\", \"reason_code\": \"because\"}",
        400,
        "invalid_request",
    );
    t.json(
        "reason code as a number",
        "POST",
        &revoke_p,
        "ops",
        "{\"reason\": \"x\", \"reason_code\": 1}",
        400,
        "invalid_request",
    );
    t.json(
        "csr as a number",
        "POST",
        &cert_o,
        "svc",
        "{\"csr\": 1}",
        400,
        "invalid_request",
    );
    t.json(
        "csr as bytes",
        "POST",
        &cert_o,
        "svc",
        json!({"csr": good_der}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "audience as an array",
        "POST",
        &token_o,
        "svc",
        "{\"audience\": [\"api:billing\"]}",
        400,
        "invalid_request",
    );
    t.json(
        "token body as an array",
        "POST",
        &token_o,
        "svc",
        "[]",
        400,
        "invalid_request",
    );
    t.json(
        "introspected token as a number",
        "POST",
        "/v1/introspect",
        "svc",
        "{\"token\": 1}",
        400,
        "invalid_request",
    );

    // --- Durations ----------------------------------------------------------------------
    t.class("durations");
    for (value, code) in [
        (json!(0), "invalid_duration"),
        (json!(901), "invalid_duration"),
        (json!(86_400), "invalid_duration"),
        (json!(u32::MAX), "invalid_duration"),
        (json!(-1), "invalid_request"),
        (json!(-5), "invalid_request"),
        (json!(i64::MIN), "invalid_request"),
        (json!(1.5), "invalid_request"),
        (json!(60.0), "invalid_request"),
        (json!(1e3), "invalid_request"),
        (json!(4_294_967_296u64), "invalid_request"),
        (json!(u64::MAX), "invalid_request"),
    ] {
        t.request_with(
            format!("duration {value}"),
            |b| b["duration_secs"] = value.clone(),
            400,
            code,
        );
    }
    let lit = |d: &str| {
        format!(
            "{{\"resource\": \"db:payroll\", \"task\": \"t\", \"duration_secs\": {d}, \"profile\": \"mtls-client\"}}"
        )
    };
    t.request(
        "duration 18446744073709551616 (u64 overflow)",
        lit("18446744073709551616"),
        400,
        "invalid_request",
    );
    t.request("duration 1e308", lit("1e308"), 400, "invalid_request");
    t.request(
        "duration of 400 digits",
        lit(&"9".repeat(400)),
        400,
        "invalid_json",
    );
    t.request("duration 1e400", lit("1e400"), 400, "invalid_json");
    t.request("duration -0", lit("-0"), 400, "invalid_request");
    t.request("duration 0x3c", lit("0x3c"), 400, "invalid_json");
    t.request("duration +60", lit("+60"), 400, "invalid_json");
    t.request("duration 060", lit("060"), 400, "invalid_json");

    // --- Resource names ---------------------------------------------------------------
    t.class("resource names");
    for (what, resource) in [
        ("control character", "db:pay\u{1}roll"),
        ("NUL", "db:payroll\u{0}"),
        ("newline", "db:payroll\n"),
        ("newline and forged line", "db:payroll\nresource: db:root"),
        ("carriage return", "db:pay\rroll"),
        ("tab", "db:\tpayroll"),
        ("escape sequence", "db:\u{1b}[31mpayroll"),
        ("DEL", "db:payroll\u{7f}"),
        ("space", "db: payroll"),
        ("trailing space", "db:payroll "),
        ("empty", ""),
        ("../ after a prefix", "api:../db:payroll"),
        ("../ inside", "api:x/../../etc/passwd"),
        ("./ inside", "api:./x"),
        ("only ..", ".."),
        ("leading /", "/etc/passwd"),
        ("empty path segment", "api:a//b"),
        ("trailing /", "release:acme/"),
        ("backslash traversal", "api:..\\..\\x"),
        ("percent-encoded ../", "api:%2e%2e/x"),
        ("percent-encoded NUL", "api:x%00"),
        ("percent-encoded newline", "api:x%0a"),
        ("double-encoded ../", "api:%252e%252e/x"),
        ("query string", "api:x?y=1"),
        ("fragment", "api:x#y"),
        ("RTL override", "api:\u{202e}lmx.exe"),
        ("LTR isolate", "api:x\u{2066}y"),
        ("Arabic letter mark", "api:x\u{61c}y"),
        ("zero-width space", "api:bil\u{200b}ling"),
        ("zero-width joiner", "api:bil\u{200d}ling"),
        ("BOM", "\u{feff}api:billing"),
        ("Cyrillic homoglyph", "db:p\u{430}yroll"),
        ("Greek homoglyph", "\u{3bf}t:x"),
        ("fullwidth letters", "\u{ff44}\u{ff42}:payroll"),
        ("combining accent", "api:bille\u{301}"),
        ("line separator", "api:x\u{2028}y"),
        ("non-breaking space", "api:x\u{a0}y"),
        ("emoji", "api:\u{1f600}"),
        ("quote", "api:x\"y"),
        ("angle brackets", "api:<script>"),
        ("shell metacharacters", "api:$(id)"),
        ("wildcard", "api:*"),
        ("question mark wildcard", "db:payrol?"),
        ("201 characters", &format!("api:{}", "a".repeat(197))),
        ("10 kB", &format!("api:{}", "a".repeat(10_000))),
        ("10 kB of dots", &".".repeat(10_000)),
    ] {
        t.request_with(
            format!("resource with {what}"),
            |b| b["resource"] = json!(resource),
            400,
            "invalid_request",
        );
    }
    t.request_with(
        "a name no policy covers",
        |b| b["resource"] = json!("db:other"),
        403,
        "no_policy",
    );
    t.request_with(
        "a name in other case",
        |b| b["resource"] = json!("DB:PAYROLL"),
        403,
        "no_policy",
    );

    // --- Long and odd strings elsewhere ------------------------------------------------
    t.class("long and odd strings");
    t.request_with(
        "task of 10 kB",
        |b| b["task"] = json!("x".repeat(10_000)),
        400,
        "invalid_request",
    );
    t.request_with(
        "task of 2001 characters",
        |b| b["task"] = json!("é".repeat(2001)),
        400,
        "invalid_request",
    );
    t.request_with(
        "empty task",
        |b| b["task"] = json!(""),
        400,
        "invalid_request",
    );
    t.request_with(
        "task with NUL",
        |b| b["task"] = json!("a\u{0}b"),
        400,
        "invalid_request",
    );
    t.request_with(
        "task with escape sequence",
        |b| b["task"] = json!("\u{1b}[2Japprove me"),
        400,
        "invalid_request",
    );
    t.request_with(
        "task with carriage return",
        |b| b["task"] = json!("ok\rforged"),
        400,
        "invalid_request",
    );
    t.request_with(
        "task with RTL override",
        |b| b["task"] = json!("deploy \u{202e}gnp.exe"),
        400,
        "invalid_request",
    );
    t.request_with(
        "task with Arabic letter mark",
        |b| b["task"] = json!("deploy\u{61c} now"),
        400,
        "invalid_request",
    );
    t.request_with(
        "task with C1 control",
        |b| b["task"] = json!("a\u{9b}31mb"),
        400,
        "invalid_request",
    );
    t.request_with(
        "digest of 10 kB",
        |b| b["request_digest"] = json!(format!("sha256:{}", "a".repeat(10_000))),
        400,
        "invalid_request",
    );
    t.request_with(
        "digest of unknown algorithm",
        |b| b["request_digest"] = json!(format!("md5:{}", "a".repeat(32))),
        400,
        "invalid_request",
    );
    t.request_with(
        "digest too short",
        |b| b["request_digest"] = json!("sha256:abc"),
        400,
        "invalid_request",
    );
    t.request_with(
        "digest not hex",
        |b| b["request_digest"] = json!(format!("sha256:{}", "g".repeat(64))),
        400,
        "invalid_request",
    );
    t.request_with(
        "digest with newline",
        |b| b["request_digest"] = json!(format!("sha256:{}\n", "a".repeat(64))),
        400,
        "invalid_request",
    );
    t.request_with(
        "profile unknown",
        |b| b["profile"] = json!("admin"),
        400,
        "invalid_request",
    );
    t.request_with(
        "profile of 10 kB",
        |b| b["profile"] = json!("p".repeat(10_000)),
        400,
        "invalid_request",
    );
    t.request_with(
        "profile in other case",
        |b| b["profile"] = json!("MTLS-CLIENT"),
        400,
        "invalid_request",
    );
    t.request_with(
        "profile with NUL",
        |b| b["profile"] = json!("mtls-client\u{0}"),
        400,
        "invalid_request",
    );
    t.request_with(
        "profile not allowed",
        |b| b["profile"] = json!("code-signing"),
        403,
        "profile_not_allowed",
    );
    for (what, reason) in [
        ("10 kB", "r".repeat(10_000)),
        ("501 characters", "r".repeat(501)),
        ("empty", String::new()),
        ("NUL", "a\u{0}b".into()),
        ("newline", "a\nforged: yes".into()),
        ("escape sequence", "\u{1b}[31mred".into()),
        ("RTL override", "fine \u{202e}enif".into()),
        ("Arabic letter mark", "fine\u{61c}".into()),
    ] {
        t.json(
            format!("denial reason {what}"),
            "POST",
            &deny_p,
            "bob",
            json!({"request_hash": phash, "reason": reason}).to_string(),
            400,
            "invalid_request",
        );
        t.json(
            format!("revocation reason {what}"),
            "POST",
            &revoke_p,
            "ops",
            json!({"reason": reason}).to_string(),
            400,
            "invalid_request",
        );
    }
    for (what, hash) in [
        ("nonsense", "nonsense".to_owned()),
        ("63 hex digits", format!("sha256:{}", "a".repeat(63))),
        ("65 hex digits", format!("sha256:{}", "a".repeat(65))),
        ("not hex", format!("sha256:{}", "z".repeat(64))),
        ("another algorithm", format!("sha512:{}", "a".repeat(64))),
        ("10 kB", "a".repeat(10_000)),
        ("empty", String::new()),
        ("with NUL", format!("{phash}\u{0}")),
        (
            "fullwidth digits",
            format!("sha256:{}", "\u{ff11}".repeat(64)),
        ),
    ] {
        t.json(
            format!("hash {what}"),
            "POST",
            &approve_p,
            "bob",
            json!({"request_hash": hash}).to_string(),
            400,
            "invalid_request",
        );
    }
    t.json(
        "hash of another request",
        "POST",
        &approve_p,
        "bob",
        json!({"request_hash": format!("sha256:{}", "0".repeat(64))}).to_string(),
        409,
        "request_hash_mismatch",
    );
    t.json(
        "hash in upper case of another request",
        "POST",
        &approve_p,
        "bob",
        json!({"request_hash": format!("sha256:{}", "AB".repeat(32))}).to_string(),
        409,
        "request_hash_mismatch",
    );
    t.json(
        "token audience of 10 kB",
        "POST",
        &token_o,
        "svc",
        json!({"audience": "a".repeat(10_000)}).to_string(),
        403,
        "audience_not_allowed",
    );
    t.json(
        "token audience with newline",
        "POST",
        &token_o,
        "svc",
        json!({"audience": "api:billing\nx"}).to_string(),
        403,
        "audience_not_allowed",
    );
    t.json(
        "token thumbprint of 10 kB",
        "POST",
        &token_o,
        "svc",
        json!({"x5t#S256": "a".repeat(10_000)}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "token certificate garbage",
        "POST",
        &token_o,
        "svc",
        json!({"certificate": "garbage"}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "token certificate and thumbprint",
        "POST",
        &token_o,
        "svc",
        json!({"certificate": root_pem, "x5t#S256": "x"}).to_string(),
        400,
        "invalid_request",
    );
    t.json(
        "token bound to the CA certificate",
        "POST",
        &token_o,
        "svc",
        json!({"certificate": root_pem}).to_string(),
        400,
        "invalid_request",
    );

    // --- CSRs --------------------------------------------------------------------------
    t.class("CSRs");
    let csr_json = |t: &mut Table, what: &str, csr: &str, status: u16, code: &'static str| {
        t.json(
            what,
            "POST",
            cert_o.clone(),
            "svc",
            json!({ "csr": csr }).to_string(),
            status,
            code,
        );
    };
    let csr_raw = |t: &mut Table, what: &str, body: Vec<u8>, status: u16, code: &'static str| {
        t.push(
            what,
            "POST",
            cert_o.clone(),
            Auth::Caller("svc"),
            Some("application/pkcs10"),
            body,
            status,
            code,
        );
    };
    let good_text = String::from_utf8(good_pem.clone()).unwrap();
    csr_json(&mut t, "garbage", "garbage", 400, "csr_malformed");
    csr_json(&mut t, "empty", "", 400, "csr_malformed");
    csr_json(
        &mut t,
        "only a BEGIN line",
        "-----BEGIN CERTIFICATE REQUEST-----\n",
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM with no END line",
        good_text.trim_end().rsplit_once('\n').unwrap().0,
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM cut in the middle",
        &good_text[..good_text.len() / 2],
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM with '!' in base64",
        &good_text.replacen("MII", "M!I", 1),
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM with a line of '*'",
        &good_text.replacen('\n', "\n****\n", 2),
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM with base64 padding inside",
        &good_text.replacen("MII", "M=I", 1),
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM with a NUL",
        &good_text.replacen("MII", "M\u{0}I", 1),
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM with a base64 character dropped",
        &{
            let mut lines: Vec<String> = good_text.lines().map(str::to_owned).collect();
            lines[1].pop();
            lines.join("\n")
        },
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM label CERTIFICATE",
        &der_to_pem(&good_der, "CERTIFICATE"),
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM label PUBLIC KEY",
        &der_to_pem(&good_der, "PUBLIC KEY"),
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM label with a NUL",
        &der_to_pem(&good_der, "CERTIFICATE\u{0}REQUEST"),
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "PEM labels that differ",
        &der_to_pem(&good_der, "CERTIFICATE REQUEST").replacen(
            "END CERTIFICATE REQUEST",
            "END CERTIFICATE",
            1,
        ),
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "the root certificate",
        &root_pem,
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "the root certificate labelled as a CSR",
        &der_to_pem(
            &pem_to_der(root_pem.split("-----END").next().unwrap().as_bytes()),
            "CERTIFICATE REQUEST",
        ),
        400,
        "csr_malformed",
    );
    csr_json(
        &mut t,
        "over 16 KiB",
        &"A".repeat(20_000),
        413,
        "csr_too_large",
    );
    csr_json(
        &mut t,
        "PEM padded over 16 KiB",
        &format!("{}{}", " ".repeat(17_000), good_text),
        413,
        "csr_too_large",
    );
    csr_raw(&mut t, "raw: empty", Vec::new(), 400, "csr_malformed");
    csr_raw(
        &mut t,
        "raw: random bytes",
        (0..2000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        400,
        "csr_malformed",
    );
    csr_raw(
        &mut t,
        "raw: DER cut in half",
        good_der[..good_der.len() / 2].to_vec(),
        400,
        "csr_malformed",
    );
    csr_raw(
        &mut t,
        "raw: DER one byte short",
        good_der[..good_der.len() - 1].to_vec(),
        400,
        "csr_malformed",
    );
    csr_raw(
        &mut t,
        "raw: DER with a byte after",
        [good_der.as_slice(), &[0]].concat(),
        400,
        "csr_malformed",
    );
    csr_raw(
        &mut t,
        "raw: DER with another CSR after",
        [good_der.as_slice(), &other_der].concat(),
        400,
        "csr_malformed",
    );
    csr_raw(
        &mut t,
        "raw: DER length says 4 GB",
        {
            let mut d = good_der.clone();
            d.splice(1..4, [0x84, 0xff, 0xff, 0xff, 0xff]);
            d
        },
        400,
        "csr_malformed",
    );
    csr_raw(
        &mut t,
        "raw: indefinite length",
        {
            let mut d = vec![0x30, 0x80];
            d.extend_from_slice(&good_der[4..]);
            d.extend_from_slice(&[0, 0]);
            d
        },
        400,
        "csr_malformed",
    );
    csr_raw(
        &mut t,
        "raw: 5 000 nested SEQUENCEs",
        {
            let mut d = Vec::new();
            for _ in 0..5_000 {
                d.extend_from_slice(&[0x30, 0x80]);
            }
            d
        },
        400,
        "csr_malformed",
    );
    csr_raw(
        &mut t,
        "raw: thousands of extensions, over 16 KiB",
        too_many_ext.clone(),
        413,
        "csr_too_large",
    );
    csr_raw(
        &mut t,
        "raw: PEM over 16 KiB",
        der_to_pem(&too_many_ext, "CERTIFICATE REQUEST").into_bytes(),
        413,
        "csr_too_large",
    );
    csr_raw(
        &mut t,
        "raw: signature bit flipped",
        flip_last_bit(&good_der),
        400,
        "csr_signature_invalid",
    );
    csr_json(
        &mut t,
        "signature bit flipped (PEM)",
        &der_to_pem(&flip_last_bit(&good_der), "CERTIFICATE REQUEST"),
        400,
        "csr_signature_invalid",
    );
    csr_raw(
        &mut t,
        "raw: subject changed after signing",
        {
            let mut d = good_der.clone();
            let at = d.windows(9).position(|w| w == b"ignored-b").unwrap();
            d[at] = b'I';
            d
        },
        400,
        "csr_signature_invalid",
    );
    csr_raw(
        &mut t,
        "raw: another key's signature",
        {
            // Same length signatures are not guaranteed; splice by structure.
            let a = lockstep_signed_parts(&good_der);
            let b = lockstep_signed_parts(&other_der);
            rebuild_signed(a.0, a.1, b.2)
        },
        400,
        "csr_signature_invalid",
    );
    csr_raw(
        &mut t,
        "raw: empty signature",
        {
            let a = lockstep_signed_parts(&good_der);
            rebuild_signed(a.0, a.1, &[0x03, 0x01, 0x00])
        },
        400,
        "csr_signature_invalid",
    );
    csr_raw(
        &mut t,
        "raw: signature with unused bits",
        {
            let a = lockstep_signed_parts(&good_der);
            let mut sig = a.2.to_vec();
            sig[2] = 0x01;
            rebuild_signed(a.0, a.1, &sig)
        },
        400,
        "csr_malformed",
    );
    csr_raw(
        &mut t,
        "raw: EC point off the curve",
        {
            let mut d = good_der.clone();
            // The uncompressed point follows `03 42 00 04`.
            let at = d
                .windows(4)
                .position(|w| w == [0x03, 0x42, 0x00, 0x04])
                .unwrap()
                + 4;
            d[at + 10] ^= 0x01;
            d
        },
        400,
        "unsupported_key_type",
    );
    for (what, der) in &unsupported {
        csr_json(
            &mut t,
            &format!("{what} key"),
            std::str::from_utf8(der).unwrap(),
            400,
            "unsupported_key_type",
        );
    }
    csr_json(
        &mut t,
        "RSA signed with SHA-1",
        std::str::from_utf8(&rsa_sha1).unwrap(),
        400,
        "unsupported_signature_algorithm",
    );
    csr_json(
        &mut t,
        "EC signed with SHA-1",
        std::str::from_utf8(&ec_sha1).unwrap(),
        400,
        "unsupported_signature_algorithm",
    );
    csr_json(
        &mut t,
        "EC signed with SHA-512",
        std::str::from_utf8(&ec_sha512).unwrap(),
        400,
        "unsupported_signature_algorithm",
    );
    t.push(
        "raw: thousands of extensions, under 16 KiB, to a pending session",
        "POST",
        cert_p.clone(),
        Auth::Caller("alice"),
        Some("application/pkcs10"),
        many_ext.clone(),
        409,
        "session_not_open",
    );
    t.push(
        "a good CSR to a pending session",
        "POST",
        cert_p.clone(),
        Auth::Caller("alice"),
        Some("application/pkcs10"),
        good_pem.clone(),
        409,
        "session_not_open",
    );
    t.push(
        "a good CSR from someone else",
        "POST",
        cert_o.clone(),
        Auth::Caller("bob"),
        Some("application/pkcs10"),
        good_pem.clone(),
        403,
        "not_requester",
    );
    t.push(
        "a good CSR from a stranger",
        "POST",
        cert_o.clone(),
        Auth::Caller("mallory"),
        Some("application/pkcs10"),
        good_pem.clone(),
        404,
        "session_not_found",
    );

    // --- Session ids ------------------------------------------------------------------------
    t.class("session ids");
    let get = |t: &mut Table, what: &str, path: String, status: u16, code: &'static str| {
        t.push(
            what,
            "GET",
            path,
            Auth::Caller("alice"),
            None,
            Vec::new(),
            status,
            code,
        );
    };
    for (what, id) in [
        (
            "well formed, unknown",
            "ses_aaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
        ),
        ("upper case", pid.to_ascii_uppercase()),
        ("one short", pid[..pid.len() - 1].to_owned()),
        ("one long", format!("{pid}a")),
        (
            "digits outside base32",
            "ses_aaaaaaaaaaaaaaaaaaaaaaaaa1".to_owned(),
        ),
        ("a UUID", "123e4567-e89b-12d3-a456-426614174000".to_owned()),
        ("a number", "1".to_owned()),
        ("another prefix", pid.replacen("ses_", "crt_", 1)),
        ("10 kB", "a".repeat(10_000)),
        ("percent-encoded ../", "..%2F..%2Fetc%2Fpasswd".to_owned()),
        ("percent-encoded dots", "%2e%2e".to_owned()),
        ("percent-encoded NUL", format!("{pid}%00")),
        ("percent-encoded newline", format!("{pid}%0a")),
        ("percent-encoded space", format!("{pid}%20")),
        ("invalid UTF-8", "%ff%fe".to_owned()),
        ("overlong UTF-8 slash", "%c0%af".to_owned()),
        (
            "percent-encoded Cyrillic",
            "ses_%D0%B0aaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
        ),
        ("bare %", "ses_%".to_owned()),
        ("double-encoded", "%252e%252e".to_owned()),
    ] {
        get(
            &mut t,
            &format!("id {what}"),
            format!("/v1/sessions/{id}"),
            404,
            "session_not_found",
        );
    }
    get(
        &mut t,
        "id encoded slash then a verb",
        format!("/v1/sessions/{pid}%2Fclose"),
        404,
        "session_not_found",
    );
    t.push(
        "close of invalid UTF-8",
        "POST",
        "/v1/sessions/%ff/close",
        Auth::Caller("alice"),
        None,
        Vec::new(),
        404,
        "session_not_found",
    );
    t.json(
        "approve of invalid UTF-8",
        "POST",
        "/v1/sessions/%ff/approve",
        "bob",
        json!({"request_hash": phash}).to_string(),
        404,
        "session_not_found",
    );
    t.json(
        "certificate of ../",
        "POST",
        "/v1/sessions/..%2F..%2Fx/certificate",
        "svc",
        json!({"csr": good_text}).to_string(),
        404,
        "session_not_found",
    );
    t.push(
        "token of a UUID",
        "POST",
        "/v1/sessions/123e4567-e89b-12d3-a456-426614174000/token",
        Auth::Caller("svc"),
        None,
        Vec::new(),
        404,
        "session_not_found",
    );
    for (what, path) in [
        (
            "raw ../ traversal",
            "/v1/sessions/../../etc/passwd".to_owned(),
        ),
        ("raw ./ segment", format!("/v1/sessions/./{pid}")),
        (
            "raw .. back to sessions",
            format!("/v1/sessions/{pid}/../{pid}"),
        ),
        ("double slash", format!("/v1/sessions//{pid}")),
        ("trailing slash", format!("/v1/sessions/{pid}/")),
        ("an unknown verb", format!("/v1/sessions/{pid}/promote")),
        ("a verb too many", format!("/v1/sessions/{pid}/close/now")),
        ("backslashes", "/v1\\sessions\\x".to_owned()),
        ("upper-case path", format!("/V1/SESSIONS/{pid}")),
    ] {
        get(&mut t, what, path, 404, "not_found");
    }
    get(
        &mut t,
        "audit of ../",
        "/v1/audit?session=../../etc".into(),
        404,
        "session_not_found",
    );
    t.push(
        "audit of invalid UTF-8",
        "GET",
        "/v1/audit?session=%ff",
        Auth::Caller("auditor"),
        None,
        Vec::new(),
        404,
        "session_not_found",
    );
    t.push(
        "audit with an unknown parameter",
        "GET",
        "/v1/audit?sesion=x",
        Auth::Caller("auditor"),
        None,
        Vec::new(),
        400,
        "invalid_request",
    );
    t.push(
        "audit with a negative limit",
        "GET",
        "/v1/audit?limit=-1",
        Auth::Caller("auditor"),
        None,
        Vec::new(),
        400,
        "invalid_request",
    );
    t.push(
        "audit with a huge cursor",
        "GET",
        "/v1/audit?after=99999999999999999999999",
        Auth::Caller("auditor"),
        None,
        Vec::new(),
        400,
        "invalid_request",
    );
    get(
        &mut t,
        "list with an unknown state",
        "/v1/sessions?state=everything".into(),
        400,
        "invalid_request",
    );
    get(
        &mut t,
        "list with a state of NUL",
        "/v1/sessions?state=open%00".into(),
        400,
        "invalid_request",
    );
    get(
        &mut t,
        "list with a limit that is text",
        "/v1/sessions?limit=all".into(),
        400,
        "invalid_request",
    );
    get(
        &mut t,
        "list with an unknown parameter",
        "/v1/sessions?tenant=acme".into(),
        400,
        "invalid_request",
    );
    get(
        &mut t,
        "list with the state twice",
        "/v1/sessions?state=open&state=closed".into(),
        400,
        "invalid_request",
    );
    for (what, cursor) in [
        ("text", "soon"),
        ("a session id alone", "ses_aaaaaaaaaaaaaaaaaaaaaaaaaa"),
        ("a malformed id", "1700000000.ses_x"),
        ("a negative time", "-1"),
        ("a time past i64", "99999999999999999999"),
        ("nothing", ""),
    ] {
        get(
            &mut t,
            &format!("list before a cursor that is {what}"),
            format!("/v1/sessions?before={cursor}"),
            400,
            "invalid_request",
        );
    }
    t.push(
        "DELETE a session",
        "DELETE",
        format!("/v1/sessions/{pid}"),
        Auth::Caller("alice"),
        None,
        Vec::new(),
        405,
        "method_not_allowed",
    );
    t.push(
        "PUT sessions",
        "PUT",
        sessions,
        Auth::Caller("alice"),
        Some("application/json"),
        ok.clone(),
        405,
        "method_not_allowed",
    );
    t.push(
        "GET a verb",
        "GET",
        format!("/v1/sessions/{pid}/close"),
        Auth::Caller("alice"),
        None,
        Vec::new(),
        405,
        "method_not_allowed",
    );

    // --- Bearer tokens ------------------------------------------------------------------------
    t.class("bearer tokens");
    let now = SystemClock.now().unix();
    let claims = |edit: &dyn Fn(&mut Value)| {
        let mut c = json!({"iss": idp.issuer(), "sub": "repo:acme/app", "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 300});
        edit(&mut c);
        c
    };
    let es = |c: Value| idp.sign_claims("ES256", Some("es"), c);
    t.auth("no Authorization header", Auth::None);
    t.auth(
        "alg none",
        Auth::Bearer(idp.sign_claims("none", Some("es"), claims(&|_| {}))),
    );
    t.auth(
        "alg none without kid",
        Auth::Bearer(idp.sign_claims("none", None, claims(&|_| {}))),
    );
    t.auth(
        "alg NoNe",
        Auth::Bearer(jwt(
            &json!({"alg": "NoNe", "kid": "es"}),
            &claims(&|_| {}),
            b"",
        )),
    );
    t.auth(
        "HS256 keyed with the RSA public key (alg confusion)",
        Auth::Bearer(idp.sign_claims("HS256", Some("rs"), claims(&|_| {}))),
    );
    t.auth(
        "HS256 without kid",
        Auth::Bearer(idp.sign_claims("HS256", None, claims(&|_| {}))),
    );
    t.auth(
        "RS256 header naming the EC key",
        Auth::Bearer(idp.sign_claims("RS256", Some("es"), claims(&|_| {}))),
    );
    t.auth(
        "ES256 header naming the RSA key",
        Auth::Bearer(idp.sign_claims("ES256", Some("rs"), claims(&|_| {}))),
    );
    t.auth(
        "ES384",
        Auth::Bearer(jwt(
            &json!({"alg": "ES384", "kid": "es"}),
            &claims(&|_| {}),
            &[1; 96],
        )),
    );
    t.auth(
        "EdDSA",
        Auth::Bearer(jwt(
            &json!({"alg": "EdDSA", "kid": "es"}),
            &claims(&|_| {}),
            &[1; 64],
        )),
    );
    t.auth(
        "PS256",
        Auth::Bearer(jwt(
            &json!({"alg": "PS256", "kid": "rs"}),
            &claims(&|_| {}),
            &[1; 256],
        )),
    );
    t.auth(
        "alg missing",
        Auth::Bearer(jwt(&json!({"kid": "es"}), &claims(&|_| {}), &[1; 64])),
    );
    t.auth(
        "alg a number",
        Auth::Bearer(jwt(
            &json!({"alg": 256, "kid": "es"}),
            &claims(&|_| {}),
            &[1; 64],
        )),
    );
    t.auth(
        "crit header",
        Auth::Bearer(jwt(
            &json!({"alg": "ES256", "kid": "es", "crit": ["exp"]}),
            &claims(&|_| {}),
            &[1; 64],
        )),
    );
    t.auth(
        "jku header to elsewhere",
        Auth::Bearer(jwt(
            &json!({"alg": "ES256", "jku": "http://127.0.0.1:1/jwks.json"}),
            &claims(&|_| {}),
            &[1; 64],
        )),
    );
    t.auth(
        "kid a number",
        Auth::Bearer(jwt(
            &json!({"alg": "ES256", "kid": 1}),
            &claims(&|_| {}),
            &[1; 64],
        )),
    );
    t.auth(
        "signed by another issuer's key",
        Auth::Bearer(other_idp.sign_claims("ES256", Some("es"), claims(&|_| {}))),
    );
    t.auth(
        "another issuer (not trusted)",
        Auth::Bearer(other_idp.token("repo:acme/app", AUDIENCE, Value::Null, 300)),
    );
    t.auth(
        "wrong issuer claim",
        Auth::Bearer(es(claims(&|c| {
            c["iss"] = json!("https://elsewhere.example")
        }))),
    );
    t.auth(
        "issuer with a trailing slash",
        Auth::Bearer(es(claims(&|c| {
            c["iss"] = json!(format!("{}/", idp.issuer()))
        }))),
    );
    t.auth(
        "issuer as an array",
        Auth::Bearer(es(claims(&|c| c["iss"] = json!([idp.issuer()])))),
    );
    t.auth(
        "wrong audience",
        Auth::Bearer(es(claims(&|c| {
            c["aud"] = json!("https://elsewhere.example")
        }))),
    );
    t.auth(
        "audience missing",
        Auth::Bearer(es(claims(&|c| {
            c.as_object_mut().unwrap().remove("aud");
        }))),
    );
    t.auth(
        "audience as an empty array",
        Auth::Bearer(es(claims(&|c| c["aud"] = json!([])))),
    );
    t.auth(
        "expired",
        Auth::Bearer(idp.token("repo:acme/app", AUDIENCE, Value::Null, -3600)),
    );
    t.auth(
        "expired beyond the leeway",
        Auth::Bearer(es(claims(&|c| c["exp"] = json!(now - 31)))),
    );
    t.auth(
        "nbf in the future",
        Auth::Bearer(es(claims(&|c| c["nbf"] = json!(now + 3600)))),
    );
    t.auth(
        "iat in the future",
        Auth::Bearer(es(claims(&|c| c["iat"] = json!(now + 3600)))),
    );
    t.auth(
        "exp missing",
        Auth::Bearer(es(claims(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }))),
    );
    t.auth(
        "exp as text",
        Auth::Bearer(es(claims(&|c| c["exp"] = json!((now + 300).to_string())))),
    );
    t.auth(
        "exp null",
        Auth::Bearer(es(claims(&|c| c["exp"] = json!(null)))),
    );
    t.auth(
        "exp negative",
        Auth::Bearer(es(claims(&|c| c["exp"] = json!(i64::MIN)))),
    );
    t.auth(
        "sub missing",
        Auth::Bearer(es(claims(&|c| {
            c.as_object_mut().unwrap().remove("sub");
        }))),
    );
    t.auth(
        "sub empty",
        Auth::Bearer(es(claims(&|c| c["sub"] = json!("")))),
    );
    t.auth(
        "sub with newline",
        Auth::Bearer(es(claims(&|c| {
            c["sub"] = json!("repo:acme/app\ntoken:alice")
        }))),
    );
    t.auth(
        "sub of 10 kB",
        Auth::Bearer(es(claims(&|c| c["sub"] = json!("s".repeat(10_000))))),
    );
    t.auth(
        "kid pointing nowhere",
        Auth::Bearer(idp.sign_claims("ES256", Some("rotated-away"), claims(&|_| {}))),
    );
    t.auth(
        "no kid",
        Auth::Bearer(idp.sign_claims("ES256", None, claims(&|_| {}))),
    );
    t.auth(
        "signature bit flipped",
        Auth::Bearer({
            let good = es(claims(&|_| {}));
            let (head, sig) = good.rsplit_once('.').unwrap();
            let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            sig[10] ^= 1;
            format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig))
        }),
    );
    t.auth(
        "claims swapped under a good signature",
        Auth::Bearer({
            let good = es(claims(&|_| {}));
            let parts: Vec<&str> = good.split('.').collect();
            let forged =
                URL_SAFE_NO_PAD.encode(claims(&|c| c["sub"] = json!("token:alice")).to_string());
            format!("{}.{forged}.{}", parts[0], parts[2])
        }),
    );
    t.auth(
        "empty signature",
        Auth::Bearer({
            let good = es(claims(&|_| {}));
            format!("{}.", good.rsplit_once('.').unwrap().0)
        }),
    );
    t.auth(
        "signature not base64url",
        Auth::Bearer({
            let good = es(claims(&|_| {}));
            format!("{}.!!!!", good.rsplit_once('.').unwrap().0)
        }),
    );
    t.auth(
        "four segments",
        Auth::Bearer(format!("{}.x", es(claims(&|_| {})))),
    );
    t.auth(
        "header not JSON",
        Auth::Bearer(format!(
            "{}.{}.AAAA",
            URL_SAFE_NO_PAD.encode("not json"),
            URL_SAFE_NO_PAD.encode("{}")
        )),
    );
    t.auth(
        "header a JSON array",
        Auth::Bearer(format!(
            "{}.{}.AAAA",
            URL_SAFE_NO_PAD.encode("[\"ES256\"]"),
            URL_SAFE_NO_PAD.encode("{}")
        )),
    );
    t.auth(
        "payload not JSON",
        Auth::Bearer(format!(
            "{}.{}.AAAA",
            URL_SAFE_NO_PAD.encode("{\"alg\":\"ES256\",\"kid\":\"es\"}"),
            URL_SAFE_NO_PAD.encode("\u{0}\u{1}")
        )),
    );
    t.auth(
        "header in padded base64",
        Auth::Bearer(format!(
            "{}.{}.AAAA",
            STANDARD.encode("{\"alg\":\"ES256\"}"),
            URL_SAFE_NO_PAD.encode("{}")
        )),
    );
    t.auth(
        "header with a duplicate alg",
        Auth::Bearer(format!(
            "{}.{}.AAAA",
            URL_SAFE_NO_PAD.encode("{\"alg\":\"none\",\"alg\":\"ES256\",\"kid\":\"es\"}"),
            URL_SAFE_NO_PAD.encode(claims(&|_| {}).to_string())
        )),
    );
    t.auth(
        "a huge header (10 kB)",
        Auth::Bearer(jwt(
            &json!({"alg": "ES256", "kid": "es", "x": "h".repeat(10_000)}),
            &claims(&|_| {}),
            &[1; 64],
        )),
    );
    t.auth(
        "a header nested 10 000 deep",
        Auth::Bearer(format!(
            "{}.{}.AAAA",
            URL_SAFE_NO_PAD.encode(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
            URL_SAFE_NO_PAD.encode("{}")
        )),
    );
    t.auth(
        "a token of 20 kB",
        Auth::Bearer(jwt(
            &json!({"alg": "ES256", "kid": "es"}),
            &claims(&|c| c["x"] = json!("h".repeat(20_000))),
            &[1; 64],
        )),
    );
    t.auth("garbage", Auth::Bearer("garbage".into()));
    t.auth("a.b.c", Auth::Bearer("a.b.c".into()));
    t.auth("dots only", Auth::Bearer("..".into()));
    t.auth("empty bearer", Auth::Header(b"Bearer ".to_vec()));
    t.auth("scheme only", Auth::Header(b"Bearer".to_vec()));
    t.auth(
        "Basic scheme",
        Auth::Header(b"Basic YWxpY2U6cGFzcw==".to_vec()),
    );
    t.auth("no scheme", Auth::Header(b"lst_abcdef".to_vec()));
    t.auth("unknown API token", Auth::Bearer("lst_not-a-token".into()));
    t.auth(
        "API token of another server",
        Auth::Bearer(
            lockstep::auth::tokens::generate()
                .unwrap()
                .0
                .expose_secret()
                .to_owned(),
        ),
    );
    t.auth(
        "API token with a character more",
        Auth::Bearer(format!("{}x", srv.token("alice"))),
    );
    t.auth(
        "API token cut short",
        Auth::Bearer(srv.token("alice")[..srv.token("alice").len() - 1].to_owned()),
    );
    t.auth(
        "API token twice",
        Auth::Bearer(format!("{} {}", srv.token("alice"), srv.token("alice"))),
    );
    t.auth(
        "API token in a Basic header",
        Auth::Header(format!("Basic {}", srv.token("alice")).into_bytes()),
    );
    t.auth(
        "non-ASCII header",
        Auth::Header([b"Bearer ".as_slice(), "lst_\u{e9}t\u{e9}".as_bytes()].concat()),
    );
    t.auth(
        "Latin-1 byte in the header",
        Auth::Header(b"Bearer lst_\xe9".to_vec()),
    );
    t.auth(
        "header of 20 kB",
        Auth::Header(format!("Bearer {}", "a".repeat(20_000)).into_bytes()),
    );
    t.push(
        "introspection without a caller",
        "POST",
        "/v1/introspect",
        Auth::None,
        Some("application/x-www-form-urlencoded"),
        format!("token={good_oidc}"),
        401,
        "unauthenticated",
    );
    t.push(
        "audit with alg none",
        "GET",
        "/v1/audit",
        Auth::Bearer(idp.sign_claims("none", Some("es"), claims(&|_| {}))),
        None,
        Vec::new(),
        401,
        "unauthenticated",
    );

    // --- Run ----------------------------------------------------------------------------------
    let config = lockstep::config::Config::load(&srv.config_path).unwrap();
    let store = SqliteStore::open(config.store.unwrap().sqlite_path().unwrap()).unwrap();
    let mut before = snapshot(&store).await;
    let mut failures = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &t.rows {
        *counts.entry(row.class).or_default() += 1;
        let header = match &row.auth {
            Auth::None => None,
            Auth::Caller(c) => Some(format!("Bearer {}", srv.token(c)).into_bytes()),
            Auth::Bearer(b) => Some(format!("Bearer {b}").into_bytes()),
            Auth::Header(h) => Some(h.clone()),
        };
        let answer = wire
            .send(
                row.method,
                &row.path,
                header.as_deref(),
                row.content_type.as_deref(),
                &row.body,
            )
            .await;
        if let Some(f) = check(row, &answer) {
            failures.push(f);
        }
        let after = snapshot(&store).await;
        let mut same = after.sessions == before.sessions
            && after.credentials == before.credentials
            && after.audit == before.audit;
        same &= after.refused >= before.refused;
        if !same {
            failures.push(format!(
                "[{}] {}: the store changed:\nbefore {before:#?}\nafter {after:#?}",
                row.class, row.what
            ));
        }
        before = after;
    }
    eprintln!("bad input rows by class:");
    for (class, n) in &counts {
        eprintln!("  {n:4}  {class}");
    }
    eprintln!("  {:4}  in all", t.rows.len());
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        t.rows.len(),
        failures.join("\n")
    );

    // A refused call is recorded with what it aimed at, cut short: a long
    // path does not make a long audit entry.
    let long = format!("/v1/sessions/{}", "a".repeat(10_000));
    let answer = wire.send("GET", &long, None, None, b"").await;
    assert_eq!(answer.status, 401);
    let entries = store.audit_entries(0, 1_000_000, None).await.unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last.kind, "refused");
    assert!(
        last.body.len() < 400 && last.body.contains("GET /v1/sessions/aaaa"),
        "{}",
        last.body
    );

    // A cursor past every entry pages to nothing (it once wrapped around
    // to the first entry).
    for after in [u64::MAX, 1 << 63, (1 << 63) - 1] {
        let (status, page) = srv
            .call(
                "GET",
                &format!("/v1/audit?after={after}"),
                Some("auditor"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["entries"], json!([]), "after={after}");
    }

    // OCSP answers in OCSP, whatever the path: malformedRequest (1).
    for path in ["/v1/ocsp/%ff%fe", "/v1/ocsp/not-base64!", "/v1/ocsp/AAAA"] {
        let answer = wire.send("GET", path, None, None, b"").await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.content_type, "application/ocsp-response", "{path}");
        assert_eq!(answer.body, [0x30, 0x03, 0x0a, 0x01, 0x01], "{path}");
    }
    let answer = wire
        .send(
            "POST",
            "/v1/ocsp",
            None,
            Some("application/ocsp-request"),
            &[0x30; 9000],
        )
        .await;
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, [0x30, 0x03, 0x0a, 0x01, 0x01].as_slice())
    );
    assert_eq!(snapshot(&store).await.sessions, before.sessions);

    // The open session was mintable all along: a good CSR gets its
    // certificate, and that does change the store.
    let (status, body) = srv
        .call(
            "POST",
            &cert_o,
            Some("svc"),
            Some(json!({"csr": good_text})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let after = snapshot(&store).await;
    assert_ne!(after.credentials, before.credentials);
}

/// Splits a signed DER structure into (tbs TLV, algorithm TLV, signature TLV).
fn lockstep_signed_parts(der: &[u8]) -> (&[u8], &[u8], &[u8]) {
    use der::{Reader, SliceReader};
    let mut r = SliceReader::new(der).unwrap();
    r.sequence(|r| {
        let tbs = r.tlv_bytes()?;
        let alg = r.tlv_bytes()?;
        let sig = r.tlv_bytes()?;
        Ok::<_, der::Error>((tbs, alg, sig))
    })
    .unwrap()
}

/// `SEQUENCE { parts… }` with a DER length.
fn rebuild_signed(tbs: &[u8], alg: &[u8], sig: &[u8]) -> Vec<u8> {
    let content = [tbs, alg, sig].concat();
    let mut out = vec![0x30];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(&content);
    out
}
