//! Break-glass sessions against a running service on SoftHSM2: they open
//! without a quorum (or on their one approval), say so in the certificate
//! (read by openssl), the token (read by jsonwebtoken) and every trail
//! entry, are limited per requester, and must be reviewed by someone other
//! than their requester before the review window closes, or stay flagged
//! (`lockstep status --unreviewed`, the metric, a `review_overdue` entry).

mod common;

use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};

use common::openssl;
use common::server::TestServer;

const POLICY: &str = r#"
operators = ["token:ops"]

[[resource]]
match = "db:prod"
requesters = ["token:alice"]
approvers = ["token:bob", "token:carol"]
quorum = 2
max_duration = "1h"
profiles = ["mtls-client", "token"]
audiences = ["payroll-api"]
credentials = 3
break_glass = { requesters = ["token:oncall"], max_duration = "10m", review_within = "2s", per_day = 2 }

[[resource]]
match = "plc:line1"
requesters = ["token:alice"]
approvers = ["token:bob", "token:carol"]
quorum = 2
max_duration = "1h"
profiles = ["mtls-client"]
break_glass = { requesters = ["token:oncall", "token:oncall2"], approvers = ["token:dave"], max_duration = "10m" }
"#;

const CALLERS: &[&str] = &[
    "alice", "bob", "carol", "dave", "oncall", "oncall2", "ops", "mallory",
];

/// The token the test's scrapes send.
const METRICS_TOKEN: &str = "break-glass-metrics-token-0123";

async fn start(name: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = common::write(dir.path(), "metrics.token", METRICS_TOKEN);
    let extra = format!("[metrics]\ntoken = \"file:{}\"\n", token.display());
    let srv = TestServer::start(name, POLICY, CALLERS, &extra).await;
    (srv, dir)
}

/// `oncall` asks for break-glass on `resource`: status and body.
async fn break_glass(srv: &TestServer, resource: &str) -> (u16, Value) {
    break_glass_as(srv, "oncall", resource).await
}

async fn break_glass_as(srv: &TestServer, who: &str, resource: &str) -> (u16, Value) {
    srv.call(
        "POST",
        "/v1/sessions",
        Some(who),
        Some(json!({
            "resource": resource,
            "task": "primary database down: restore service",
            "duration_secs": 300,
            "profile": "mtls-client",
            "break_glass": true,
        })),
    )
    .await
}

async fn review(srv: &TestServer, who: &str, id: &str, outcome: &str) -> (u16, Value) {
    srv.call(
        "POST",
        &format!("/v1/sessions/{id}/review"),
        Some(who),
        Some(json!({"outcome": outcome, "note": "the primary was down"})),
    )
    .await
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The trail entries of session `id` (kind, body), read from the store.
async fn trail(srv: &TestServer, id: Option<&str>) -> Vec<(String, String)> {
    let config = lockstep::config::Config::load(&srv.config_path).unwrap();
    let store = lockstep::store::open(&config.store.unwrap()).await.unwrap();
    let id = id.map(|i| lockstep::sessions::SessionId::parse(i).unwrap());
    let entries = store.audit_entries(0, 10_000, id.as_ref()).await.unwrap();
    entries.into_iter().map(|e| (e.kind, e.body)).collect()
}

/// The `breakGlass [4]` field of the certificate's session extension:
/// openssl's asn1parse line for it (the extension's value parsed on its
/// own) and its content octets, from the DER openssl wrote out.
fn break_glass_field(der: &std::path::Path) -> Option<(String, Vec<u8>)> {
    let inner = der.with_extension("session-ext.der");
    let der = der.to_str().unwrap();
    let (ok, dump) = openssl(&["asn1parse", "-inform", "DER", "-in", der]);
    assert!(ok, "{dump}");
    let lines: Vec<&str> = dump.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(":1.3.6.1.4.1.32473.7683.1.1"))
        .expect("the session extension");
    let value = lines[at + 1..]
        .iter()
        .find(|l| l.contains("OCTET STRING"))
        .unwrap();
    let offset = value.trim_start().split(':').next().unwrap().trim();
    let (ok, parsed) = openssl(&[
        "asn1parse",
        "-inform",
        "DER",
        "-in",
        der,
        "-strparse",
        offset,
        "-out",
        inner.to_str().unwrap(),
    ]);
    assert!(ok, "{parsed}");
    let line = parsed
        .lines()
        .find(|l| l.contains("cont [ 4 ]"))?
        .to_owned();
    // "   92:d=1  hl=2 l=   1 prim: cont [ 4 ]": offset, header and length.
    let number = |key: &str| -> usize {
        let rest = line.split(key).nth(1).unwrap().trim_start();
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let start: usize = line
        .trim_start()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (header, len) = (number("hl="), number(" l="));
    let bytes = std::fs::read(&inner).unwrap();
    Some((line, bytes[start + header..start + header + len].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_opens_at_once_is_marked_everywhere_and_must_be_reviewed() {
    let (srv, _dir) = start("break-glass").await;

    // Not a requester of the normal path: refused there, let in here.
    let (status, body) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some("oncall"),
            Some(json!({"resource": "db:prod", "task": "t", "duration_secs": 300, "profile": "mtls-client"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("not_a_requester"))
    );
    let (status, body) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some("alice"),
            Some(json!({"resource": "db:prod", "task": "t", "duration_secs": 300, "profile": "mtls-client", "break_glass": true})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("not_a_requester")),
        "{body}"
    );
    let (status, body) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some("oncall"),
            Some(json!({"resource": "db:prod", "task": "t", "duration_secs": 3000, "profile": "mtls-client", "break_glass": true})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_duration")),
        "{body}"
    );

    let (status, s) = break_glass(&srv, "db:prod").await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(s["state"], "open", "no quorum to wait for: {s}");
    assert_eq!(s["break_glass"]["review"], "awaiting", "{s}");
    assert_eq!(
        s["break_glass"]["reviewers"],
        json!(["token:bob", "token:carol"])
    );

    // The certificate says break-glass, as openssl reads it.
    let csr = srv.csr("oncall.key");
    let (status, cert) = srv.certificate("oncall", &id, &csr).await;
    assert_eq!(status, 201, "{cert}");
    let pem = common::write(
        srv.dir.path(),
        "bg.pem",
        cert["certificate"].as_str().unwrap(),
    );
    let der = srv.dir.path().join("bg.der");
    let (ok, said) = openssl(&[
        "x509",
        "-in",
        pem.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        der.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    let (line, content) = break_glass_field(&der).expect("breakGlass [4] in the session extension");
    assert!(line.contains("prim"), "{line}");
    assert_eq!(content, [0xff], "BOOLEAN TRUE: {line}");

    // The token says so too, as jsonwebtoken reads it.
    let (status, tok) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/token"),
            Some("oncall"),
            Some(json!({"audience": "payroll-api"})),
        )
        .await;
    assert_eq!(status, 201, "{tok}");
    let claims = srv
        .verified_claims(tok["token"].as_str().unwrap(), "payroll-api")
        .await;
    assert_eq!(claims["break_glass"], json!(true), "{claims}");
    assert_eq!(claims["sid"], id.as_str());

    // Its requester may not review it, nor may an outsider.
    let (status, body) = review(&srv, "oncall", &id, "justified").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("self_review")),
        "{body}"
    );
    let (status, body) = review(&srv, "mallory", &id, "justified").await;
    assert_eq!(status, 404, "an outsider does not see it: {body}");

    // Past the review window the sweep flags it: the listing, the metric
    // and the trail say so.
    let overdue = wait_for(&srv, &id, "overdue").await;
    assert_eq!(overdue["break_glass"]["review"], "overdue");
    let out = srv.cli("bob", &["status", "--unreviewed"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&out);
    assert!(
        listed.contains(&id) && listed.contains("review overdue"),
        "{listed}"
    );
    let metrics = scrape(&srv).await;
    assert!(
        metrics.contains("lockstep_break_glass_sessions{review=\"overdue\"} 1"),
        "{metrics}"
    );
    let entries = trail(&srv, Some(&id)).await;
    let kinds: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.starts_with(&["requested", "opened"]), "{kinds:?}");
    assert!(kinds.contains(&"review_overdue"), "{kinds:?}");
    for (kind, body) in &entries {
        assert!(lockstep::audit::is_break_glass(body), "{kind}: {body}");
    }

    // A reviewer records it from the command line; the flag clears.
    let out = srv.cli(
        "bob",
        &[
            "review",
            &id,
            "--outcome",
            "justified",
            "--note",
            "the primary was down",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let (status, body) = review(&srv, "carol", &id, "unjustified").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("already_reviewed"))
    );
    let out = srv.cli("bob", &["status", "--unreviewed", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["sessions"], json!([]), "{list}");
    let session = srv.session("bob", &id).await;
    assert_eq!(session["break_glass"]["review"], "justified");
    assert_eq!(session["break_glass"]["reviewed_by"], "token:bob");
    assert_eq!(
        session["state"], "open",
        "a justified session runs its course"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_limited_per_requester_and_unjustified_sessions_are_revoked() {
    let (srv, _dir) = start("break-glass-limit").await;
    let (_, first) = break_glass(&srv, "db:prod").await;
    // The second from the command line.
    let out = srv.cli(
        "oncall",
        &[
            "--json",
            "request",
            "--break-glass",
            "--resource",
            "db:prod",
            "--task",
            "primary down",
            "--duration",
            "5m",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(second["state"], "open", "{second}");
    assert_eq!(second["break_glass"]["review"], "awaiting");
    let (status, body) = break_glass(&srv, "db:prod").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "break_glass_limit_reached");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains('2'), "says the limit: {message}");
    let refusals: Vec<_> = trail(&srv, None)
        .await
        .into_iter()
        .filter(|(kind, body)| kind == "refused" && body.contains("break_glass_limit_reached"))
        .collect();
    assert_eq!(refusals.len(), 1, "the refusal is on the record");

    // Found unjustified while open: revoked by its reviewer, at once.
    let id = first["id"].as_str().unwrap();
    let csr = srv.csr("first.key");
    let (status, cert) = srv.certificate("oncall", id, &csr).await;
    assert_eq!(status, 201, "{cert}");
    let (status, body) = review(&srv, "carol", id, "unjustified").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "closed");
    assert_eq!(body["close_reason"], "revoked");
    assert_eq!(body["break_glass"]["review"], "unjustified");
    let out = srv.cli("carol", &["status", "--unreviewed"]);
    let listed = text(&out);
    assert!(
        listed.contains(id) && listed.contains("unjustified"),
        "stays flagged: {listed}"
    );
    let leaf = common::write(
        srv.dir.path(),
        "first.pem",
        cert["certificate"].as_str().unwrap(),
    );
    let crl = srv.crl_pem(&srv.url, "after-review").await;
    let chain = srv.dir.path().join("ca/chain.pem");
    let (ok, said) = openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        chain.to_str().unwrap(),
        "-CRLfile",
        crl.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(!ok && said.contains("certificate revoked"), "{said}");

    // The limit counts a requester's break-glass sessions on any resource.
    let (status, body) = break_glass(&srv, "plc:line1").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("break_glass_limit_reached"))
    );

    // The one-approval path: pending until one of its approvers says yes.
    let (status, s) = break_glass_as(&srv, "oncall2", "plc:line1").await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["state"], "pending");
    assert_eq!(s["break_glass"]["review"], "pending");
    assert_eq!(
        srv.vote("bob", &s, "approve").await.0,
        403,
        "not its approver"
    );
    let (status, opened) = srv.vote("dave", &s, "approve").await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["state"], "open");
    assert_eq!(opened["break_glass"]["review"], "awaiting");
    let id = s["id"].as_str().unwrap();
    let (status, body) = review(&srv, "dave", id, "justified").await;
    assert_eq!(status, 200, "its approver reviews too: {body}");
}

/// Polls the session as `bob` until its review is `state`.
async fn wait_for(srv: &TestServer, id: &str, state: &str) -> Value {
    for _ in 0..100 {
        let s = srv.session("bob", id).await;
        if s["break_glass"]["review"] == state {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the review never became {state}: {}",
        srv.session("bob", id).await
    );
}

async fn scrape(srv: &TestServer) -> String {
    let resp = srv
        .http
        .get(format!("{}/metrics", srv.url))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}
