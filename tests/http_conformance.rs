//! Connections as an outside client sees them. A request refused before
//! its body was read (413, 401, 415) leaves the connection usable for the
//! next request, or its answer says `Connection: close` and the connection
//! ends cleanly (TLS close_notify, no reset) — never a connection error
//! where a client expected a response.
//!
//! HTTP/1.1 is probed by tests/python/keepalive.py (Python's ssl and
//! http.client, one TLS connection per case, the second request on the
//! same socket); HTTP/2 by curl, whose `--next` reuses the connection
//! (`num_connects` 0 for the second transfer).

mod common;

use std::process::Command;

use serde_json::{Value, json};

use common::server::TestServer;

const POLICY: &str = r#"
[[resource]]
match = "db:payroll"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "15m"
pending_timeout = "10m"
profiles = ["mtls-client"]
"#;

/// `[server] max_body_bytes` of the test server.
const MAX_BODY: usize = 65536;

/// What must become of the connection after a case's response.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    /// The next request on the same connection is answered (200).
    Reused,
    /// The response says `Connection: close`, then a clean TLS close.
    Closed,
}

/// One request of the HTTP/1.1 table and what must come back.
struct Case {
    name: &'static str,
    request: Value,
    status: u16,
    /// The JSON `error` code; `None` for hyper's own bare answers.
    code: Option<&'static str>,
    after: After,
}

fn case(
    name: &'static str,
    request: Value,
    status: u16,
    code: Option<&'static str>,
    after: After,
) -> Case {
    Case {
        name,
        request,
        status,
        code,
        after,
    }
}

/// A `POST /v1/sessions` of `bytes` bytes with `headers` (and `extra`
/// probe options such as `chunked`).
fn post(headers: Value, bytes: usize, extra: Value) -> Value {
    let mut v =
        json!({"method": "POST", "path": "/v1/sessions", "headers": headers, "body_bytes": bytes});
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    v
}

fn cases(token: &str) -> Vec<Case> {
    use After::{Closed, Reused};
    let bearer = format!("Bearer {token}");
    let json_as_alice = json!({"Authorization": bearer, "Content-Type": "application/json"});
    let json_anonymous = json!({"Content-Type": "application/json"});
    let text_as_alice = json!({"Authorization": bearer, "Content-Type": "text/plain"});
    let none = json!({});
    let valid = json!({"resource": "db:payroll", "task": "t", "duration_secs": 60, "profile": "mtls-client"}).to_string();
    vec![
        case(
            "413: 1 MB, Content-Length over the limit",
            post(json_as_alice.clone(), 1_000_000, none.clone()),
            413,
            Some("body_too_large"),
            Closed,
        ),
        case(
            "413: 100 kB, read up to the limit, the rest drained",
            post(json_as_alice.clone(), 100_000, none.clone()),
            413,
            Some("body_too_large"),
            Reused,
        ),
        case(
            "413: 100 kB chunked (length unknown)",
            post(json_as_alice.clone(), 100_000, json!({"chunked": true})),
            413,
            Some("body_too_large"),
            Closed,
        ),
        case(
            "401 with a 40 kB body",
            post(
                json_anonymous.clone(),
                40_000,
                json!({"also_http_client": true}),
            ),
            401,
            Some("unauthenticated"),
            Reused,
        ),
        case(
            "401 with a 40 kB body sent after the answer came",
            post(
                json_anonymous.clone(),
                40_000,
                json!({"body_after_response": true}),
            ),
            401,
            Some("unauthenticated"),
            Reused,
        ),
        case(
            "401 with a small body",
            post(json_anonymous.clone(), 2, json!({"also_http_client": true})),
            401,
            Some("unauthenticated"),
            Reused,
        ),
        case(
            "401 with a small body sent after the answer came",
            post(
                json_anonymous.clone(),
                2,
                json!({"body_after_response": true}),
            ),
            401,
            Some("unauthenticated"),
            Reused,
        ),
        case(
            "401 with a 100 kB body (over the limit)",
            post(json_anonymous.clone(), 100_000, none.clone()),
            401,
            Some("unauthenticated"),
            Closed,
        ),
        case(
            "401 on Expect: 100-continue (the client holds the body back)",
            post(
                json!({"Content-Type": "application/json", "Expect": "100-continue"}),
                40_000,
                json!({"body_after_response": true}),
            ),
            401,
            Some("unauthenticated"),
            Closed,
        ),
        case(
            "401 with a small chunked body",
            post(json_anonymous, 10, json!({"chunked": true})),
            401,
            Some("unauthenticated"),
            Closed,
        ),
        case(
            "415 text/plain with a small body",
            post(text_as_alice.clone(), 5, json!({"also_http_client": true})),
            415,
            Some("unsupported_media_type"),
            Reused,
        ),
        case(
            "415 text/plain with a 40 kB body",
            post(text_as_alice, 40_000, none.clone()),
            415,
            Some("unsupported_media_type"),
            Reused,
        ),
        case(
            "404 with a body",
            json!({"method": "POST", "path": "/v1/nowhere", "headers": json_as_alice, "body_bytes": 3000}),
            404,
            Some("not_found"),
            Reused,
        ),
        case(
            "201: a valid request",
            json!({"method": "POST", "path": "/v1/sessions", "headers": {"Authorization": bearer, "Content-Type": "application/json"}, "body": valid}),
            201,
            None,
            Reused,
        ),
        // hyper's own answers to broken framing: no JSON body, but a clean close.
        case(
            "400: two Content-Length headers",
            json!({"raw": "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"}),
            400,
            None,
            Closed,
        ),
        case(
            "431: 200 headers (hyper takes 100)",
            json!({"raw": format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n", (0..200).map(|i| format!("X-{i}: a\r\n")).collect::<String>())}),
            431,
            None,
            Closed,
        ),
    ]
}

/// Runs the probe over `cases`; returns its answers by case name.
async fn probe(srv: &TestServer, cases: &[Case]) -> Vec<Value> {
    let input = serde_json::to_vec(
        &cases
            .iter()
            .map(|c| {
                let mut r = c.request.clone();
                r["name"] = json!(c.name);
                r
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let port = srv.addr.port().to_string();
    let root = srv.root_pem().to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        common::python::check("keepalive.py", &["127.0.0.1", &port, &root], &input)
    })
    .await
    .unwrap();
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_refused_bodies_leave_the_connection_usable_or_close_it_cleanly() {
    let srv = TestServer::start("http-keepalive", POLICY, &["alice"], "").await;
    let cases = cases(srv.token("alice"));
    let answers = probe(&srv, &cases).await;
    let mut failures = Vec::new();
    for c in &cases {
        let mine: Vec<&Value> = answers
            .iter()
            .filter(|a| {
                let n = a["name"].as_str().unwrap_or_default();
                n == c.name || n.strip_suffix(" (http.client)") == Some(c.name)
            })
            .collect();
        assert!(!mine.is_empty(), "{}: no answer", c.name);
        for a in mine {
            let mut wrong = Vec::new();
            if a["status"] != json!(c.status) {
                wrong.push(format!("status {} (want {})", a["status"], c.status));
            }
            // The plain http.client run reports no body details.
            if a.get("content_type").is_some() && c.code.is_some() {
                if a["code"] != json!(c.code) {
                    wrong.push(format!("code {} (want {:?})", a["code"], c.code));
                }
                if a["content_type"] != json!("application/json") {
                    wrong.push(format!("content type {}", a["content_type"]));
                }
            }
            match c.after {
                After::Reused => {
                    if a["after"] != json!("second 200") || a["same_connection"] != json!(true) {
                        wrong.push(format!(
                            "not reused: {} (same connection: {})",
                            a["after"], a["same_connection"]
                        ));
                    }
                    if a.get("connection").is_some_and(|v| !v.is_null()) {
                        wrong.push(format!("Connection: {}", a["connection"]));
                    }
                }
                After::Closed => {
                    if a["connection"] != json!("close") {
                        wrong.push(format!("no Connection: close ({})", a["connection"]));
                    }
                    if a["after"] != json!("clean") {
                        wrong.push(format!("ended {} (want a clean close)", a["after"]));
                    }
                }
            }
            if !wrong.is_empty() {
                failures.push(format!("{}: {}   [{a}]", a["name"], wrong.join("; ")));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // Every case was answered; the service still answers on a new connection.
    let (status, _) = srv.call("GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
}

/// One transfer of a curl run: what `-w` and `-D` reported.
#[derive(Debug)]
struct Transfer {
    status: u16,
    /// New connections this transfer made (0: it reused one).
    connects: u32,
    http_version: String,
    headers: String,
}

/// Runs curl over `http` (`--http2` or `--http1.1`) for `requests` (method,
/// path, headers, body bytes) in one invocation, `--next` between them, so
/// curl keeps its connection from one to the next where it can.
fn curl(srv: &TestServer, http: &str, requests: &[(&str, &str, &[&str], usize)]) -> Vec<Transfer> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("curl");
    for (i, (method, path, headers, bytes)) in requests.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        let head = dir.path().join(format!("h{i}"));
        cmd.args(["-sS", http, "--cacert", srv.root_pem().to_str().unwrap()])
            .args(["-o", "/dev/null", "-D", head.to_str().unwrap()])
            .args(["-w", "%{http_code} %{num_connects} %{http_version}\\n"])
            .args(["-X", method]);
        for h in *headers {
            cmd.args(["-H", h]);
        }
        if *bytes > 0 {
            let body = dir.path().join(format!("b{i}"));
            std::fs::write(&body, vec![b'x'; *bytes]).unwrap();
            cmd.args(["--data-binary", &format!("@{}", body.display())]);
        }
        cmd.arg(format!("{}{path}", srv.url));
    }
    let out = cmd.output().expect("curl runs");
    let text = common::output_text(&out);
    assert!(out.status.success(), "curl: {text}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let mut f = line.split(' ');
            Transfer {
                status: f.next().unwrap().parse().unwrap(),
                connects: f.next().unwrap().parse().unwrap(),
                http_version: f.next().unwrap().to_owned(),
                headers: std::fs::read_to_string(dir.path().join(format!("h{i}")))
                    .unwrap()
                    .to_ascii_lowercase(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_refused_bodies_keep_the_connection_and_carry_no_connection_header() {
    let srv = TestServer::start("http-h2", POLICY, &["alice"], "").await;
    let bearer = format!("Authorization: Bearer {}", srv.token("alice"));
    let json_as_alice: &[&str] = &[&bearer, "Content-Type: application/json"];
    let text_as_alice: &[&str] = &[&bearer, "Content-Type: text/plain"];
    let anonymous: &[&str] = &["Content-Type: application/json"];
    let requests: &[(&str, &str, &[&str], usize)] = &[
        ("POST", "/v1/sessions", json_as_alice, 1_000_000),
        ("GET", "/healthz", &[], 0),
        ("POST", "/v1/sessions", anonymous, 40_000),
        ("GET", "/healthz", &[], 0),
        ("POST", "/v1/sessions", text_as_alice, 40_000),
        ("GET", "/healthz", &[], 0),
        ("POST", "/v1/sessions", anonymous, 2),
        ("GET", "/healthz", &[], 0),
    ];
    let srv_ref = &srv;
    let transfers = tokio::task::block_in_place(|| curl(srv_ref, "--http2", requests));
    let statuses: Vec<u16> = transfers.iter().map(|t| t.status).collect();
    assert_eq!(statuses, [413, 200, 401, 200, 415, 200, 401, 200]);
    for (i, t) in transfers.iter().enumerate() {
        assert_eq!(t.http_version, "2", "transfer {i}: {t:?}");
        assert_eq!(t.connects, u32::from(i == 0), "transfer {i}: {t:?}");
        assert!(!t.headers.contains("\nconnection:"), "transfer {i}: {t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_curl_reuses_the_connection_after_a_refused_body() {
    let srv = TestServer::start("http-curl1", POLICY, &["alice"], "").await;
    // No `Expect: 100-continue`: curl sends the body at once, as most
    // clients do.
    let anonymous: &[&str] = &["Content-Type: application/json", "Expect:"];
    let bearer = format!("Authorization: Bearer {}", srv.token("alice"));
    let over: &[&str] = &[&bearer, "Content-Type: application/json", "Expect:"];
    let requests: &[(&str, &str, &[&str], usize)] = &[
        ("POST", "/v1/sessions", anonymous, 40_000),
        ("GET", "/healthz", &[], 0),
        ("POST", "/v1/sessions", over, MAX_BODY * 4),
        ("GET", "/healthz", &[], 0),
    ];
    let srv_ref = &srv;
    let transfers = tokio::task::block_in_place(|| curl(srv_ref, "--http1.1", requests));
    let got: Vec<(u16, u32)> = transfers.iter().map(|t| (t.status, t.connects)).collect();
    // The 413 over the limit closes (said so), so the next one reconnects.
    assert_eq!(
        got,
        [(401, 1), (200, 0), (413, 0), (200, 1)],
        "{transfers:?}"
    );
    assert!(transfers[2].headers.contains("\nconnection: close"));
}
