//! `GET /metrics`: scraped from a running service on its own listener and
//! behind the `[metrics] token`, checked by `promtool check metrics`
//! (Prometheus's own linter), and watched as a session is driven through
//! its life.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::gateway::free_port;
use common::server::TestServer;

const POLICY: &str = r#"
operators = ["token:ops"]

[[resource]]
match = "db:payroll"
requesters = ["token:alice"]
approvers = ["token:alice", "token:bob", "token:carol"]
quorum = 2
max_duration = "15m"
profiles = ["mtls-client"]
"#;

const CALLERS: &[&str] = &["alice", "bob", "carol", "ops"];

/// The token scrapers send (a test value, in a file of the test's own).
const TOKEN: &str = "metrics-test-token-0123456789";

/// A service with metrics on a listener of their own and behind a token.
async fn start(name: &str) -> (TestServer, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = common::write(dir.path(), "metrics.token", format!("{TOKEN}\n"));
    let port = free_port();
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"file:{}\"\n",
        token.display()
    );
    let srv = TestServer::start(name, POLICY, CALLERS, &extra).await;
    (srv, format!("http://127.0.0.1:{port}/metrics"), dir)
}

/// Sample values by series (`name{labels}` as written), comments left out.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(text: &str, series: &str) -> f64 {
    samples(text).get(series).copied().unwrap_or(0.0)
}

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// A scrape of the metrics' own listener (plain HTTP, no token).
async fn scrape(http: &reqwest::Client, url: &str) -> String {
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    resp.text().await.unwrap()
}

/// Scrapes until `ready` holds for the text (the ledger's counters follow
/// the committed-event stream, a moment after the commit).
async fn scrape_until(http: &reqwest::Client, url: &str, ready: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        let text = scrape(http, url).await;
        if ready(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the metrics never got there:\n{}", scrape(http, url).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_a_session_is_driven_and_promtool_accepts_them() {
    let (srv, url, _dir) = start("metrics-walk").await;
    let before = scrape(&srv.http, &url).await;
    let (ok, said) = promtool(&before);
    assert!(
        ok,
        "promtool check metrics refused the first scrape: {said}\n{before}"
    );
    assert_eq!(value(&before, "lockstep_store_up"), 1.0, "{before}");
    assert_eq!(value(&before, "lockstep_key_backend_up"), 1.0);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        before.contains(&format!("version=\"{version}\"")),
        "{before}"
    );

    // request → a refused self-approval → two approvals → certificate → close.
    let s = srv.request("alice", "db:payroll", 600).await;
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(srv.vote("alice", &s, "approve").await.0, 403);
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    assert_eq!(srv.vote("carol", &s, "approve").await.0, 200);
    let csr = srv.csr("alice.key");
    let (status, body) = srv.certificate("alice", &id, &csr).await;
    assert_eq!(status, 201, "{body}");
    let open = scrape(&srv.http, &url).await;
    let closed_at = |t: &str| value(t, "lockstep_sessions_closed_total{reason=\"completed\"}");
    srv.close("alice", &id).await;

    let after = scrape_until(&srv.http, &url, |t| {
        closed_at(t) >= closed_at(&before) + 1.0
    })
    .await;
    if std::env::var_os("LOCKSTEP_TEST_SHOW_METRICS").is_some() {
        eprintln!("{after}");
    }
    let (ok, said) = promtool(&after);
    assert!(ok, "promtool check metrics refused: {said}\n{after}");
    let moved = |series: &str| value(&after, series) - value(&before, series);
    for kind in ["requested", "approved", "opened", "minted", "closed"] {
        let series = format!("lockstep_ledger_entries_total{{kind=\"{kind}\"}}");
        assert!(moved(&series) >= 1.0, "{series} did not move:\n{after}");
    }
    assert_eq!(
        moved("lockstep_ledger_entries_total{kind=\"approved\"}"),
        2.0
    );
    assert_eq!(
        moved("lockstep_credentials_minted_total{kind=\"certificate\",profile=\"mtls-client\"}"),
        1.0
    );
    assert_eq!(
        moved("lockstep_refusals_total{action=\"approve\",code=\"self_approval\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved("lockstep_mint_duration_seconds_count{backend=\"pkcs11\",kind=\"certificate\"}"),
        1.0
    );
    assert!(
        moved(
            "lockstep_device_signature_duration_seconds_count{backend=\"pkcs11\",key=\"issuing\"}"
        ) >= 1.0,
        "{after}"
    );
    assert!(moved("lockstep_store_commit_duration_seconds_count{store=\"sqlite\"}") >= 5.0);
    assert!(value(&after, "lockstep_ledger_position") > value(&before, "lockstep_ledger_position"));

    // Sessions by state: open while it was, closed now.
    assert_eq!(
        value(&open, "lockstep_sessions{state=\"open\"}"),
        1.0,
        "{open}"
    );
    assert_eq!(value(&after, "lockstep_sessions{state=\"open\"}"), 0.0);
    assert_eq!(value(&after, "lockstep_sessions{state=\"closed\"}"), 1.0);
    // The closed session's certificate is on the CRL.
    assert_eq!(value(&after, "lockstep_crl_entries"), 1.0, "{after}");
    assert!(value(&after, "lockstep_crl_bytes") > value(&before, "lockstep_crl_bytes"));
    // The metrics' own follower of the event stream.
    assert!(value(&after, "lockstep_event_subscribers") >= 1.0);

    // Nothing names a caller, a session or a serial.
    let serial = body["serial"].as_str().unwrap();
    for secret in ["alice", "bob", "carol", id.as_str(), serial, TOKEN] {
        assert!(!after.contains(secret), "{secret} is in the metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_listener_serves_metrics_only_with_the_token() {
    let (srv, url, _dir) = start("metrics-token").await;
    let get = |auth: Option<&'static str>| {
        let mut req = srv.http.get(format!("{}/metrics", srv.url));
        if let Some(token) = auth {
            req = req.bearer_auth(token);
        }
        async move { req.send().await.unwrap() }
    };
    let ok = get(Some(TOKEN)).await;
    assert_eq!(ok.status(), 200);
    let text = ok.text().await.unwrap();
    assert!(text.contains("lockstep_build_info"), "{text}");
    for auth in [None, Some("lst_not-the-metrics-token"), Some("")] {
        let refused = get(auth).await;
        assert_eq!(refused.status(), 401, "{auth:?}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "unauthenticated");
    }
    // The refusals are counted, by the rule for calls without a credential.
    scrape_until(&srv.http, &url, |t| {
        value(
            t,
            "lockstep_refusals_total{action=\"request\",code=\"unauthenticated\"}",
        ) >= 3.0
    })
    .await;
    // The metrics' own listener serves nothing else.
    let other = srv
        .http
        .get(url.replace("/metrics", "/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_metrics_section_metrics_are_not_served() {
    let srv = TestServer::start("metrics-off", POLICY, CALLERS, "").await;
    let resp = srv
        .http
        .get(format!("{}/metrics", srv.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "metrics_disabled");
    assert!(body["message"].as_str().unwrap().contains("[metrics]"));
}

/// The alerting rules of docs/prometheus: valid, and firing as their unit
/// tests say (`promtool test rules`).
#[test]
fn the_alerting_rules_pass_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package prometheus; scripts/setup installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}",
            common::output_text(&out)
        );
    }
}
