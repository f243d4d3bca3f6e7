//! Webhooks: deliveries to a receiver that checks every signature with
//! the Standard Webhooks reference library (`standardwebhooks`, PyPI), in
//! order and at least once, through a receiver that is down for a while
//! (and a restart of lockstep), one that answers slowly, and one that
//! holds its answers while sessions go on being issued.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::gateway::free_port;
use common::server::TestServer;
use serde_json::Value;

const POLICY: &str = r#"
[[resource]]
match = "db:payroll"
requesters = ["token:alice"]
approvers = ["token:alice", "token:bob", "token:carol"]
quorum = 2
max_duration = "15m"
profiles = ["mtls-client"]

[[resource]]
match = "api:billing"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "15m"
profiles = ["mtls-client"]

[[resource]]
match = "db:prod"
requesters = ["token:alice"]
approvers = ["token:bob", "token:carol"]
quorum = 2
max_duration = "15m"
profiles = ["mtls-client"]
break_glass = { requesters = ["token:oncall"], max_duration = "10m" }
"#;

const CALLERS: &[&str] = &["alice", "bob", "carol", "oncall"];

/// A test secret: `whsec_` + base64 of 32 bytes.
const SECRET: &str = "whsec_dGVzdC1zZWNyZXQtb2YtbG9ja3N0ZXAtd2ViaG9va3M=";
/// Another one, which must not verify what the first signed.
const OTHER_SECRET: &str = "whsec_b3RoZXItc2VjcmV0LW9mLWxvY2tzdGVwLXdlYmhvb2s=";

/// The receiver (tests/python/webhook_receiver.py), killed when dropped.
struct Receiver {
    _child: common::gateway::Killed,
}

impl Receiver {
    fn start(port: u16, secret: &Path, log: &Path, extra: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/webhook_receiver.py");
        let mut child = Command::new(common::python::interpreter())
            .arg(script)
            .arg(port.to_string())
            .arg(secret)
            .arg(log)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening");
        Self {
            _child: common::gateway::Killed(child),
        }
    }
}

/// A test's files: the secret, the receiver's log, its port.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        common::write(dir.path(), "secret", format!("{SECRET}\n"));
        common::write(dir.path(), "other-secret", OTHER_SECRET);
        Self {
            dir,
            port: free_port(),
        }
    }

    fn secret(&self) -> PathBuf {
        self.dir.path().join("secret")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("deliveries.jsonl")
    }

    /// `[[webhook]]` for approvers of `db:*`, with `extra` settings.
    fn config(&self, extra: &str) -> String {
        format!(
            "[[webhook]]\nname = \"approvers\"\nurl = \"http://127.0.0.1:{}/hooks?token=receiver-token\"\n\
             events = [\"requested\", \"approved\", \"opened\", \"closed\"]\nresources = [\"db:*\"]\n\
             secret = \"file:{}\"\nmax_backoff = \"1s\"\n{extra}",
            self.port,
            self.secret().display()
        )
    }

    fn receiver(&self, extra: &[&str]) -> Receiver {
        Receiver::start(self.port, &self.secret(), &self.log(), extra)
    }

    /// Every request the receiver recorded, in arrival order.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The verified deliveries' bodies, first arrival of each id only.
    fn delivered(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.records()
            .into_iter()
            .filter(|r| r["verified"] == true)
            .filter(|r| seen.insert(r["id"].as_str().unwrap().to_owned()))
            .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
            .collect()
    }

    /// Waits until `n` distinct events were delivered; returns them.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        for _ in 0..300 {
            let got = self.delivered();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} deliveries, got {:#?}", self.records());
    }
}

/// The walk: request → two approvals → certificate → close; returns the
/// session as requested.
async fn walk(srv: &TestServer) -> Value {
    let s = srv.request("alice", "db:payroll", 600).await;
    let id = s["id"].as_str().unwrap();
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    assert_eq!(srv.vote("carol", &s, "approve").await.0, 200);
    let csr = srv.csr(&format!("{id}.key"));
    let (status, body) = srv.certificate("alice", id, &csr).await;
    assert_eq!(status, 201, "{body}");
    srv.close("alice", id).await;
    s
}

fn kinds(delivered: &[Value]) -> Vec<String> {
    delivered
        .iter()
        .map(|d| d["type"].as_str().unwrap().to_owned())
        .collect()
}

const WALK: [&str; 5] = [
    "session.requested",
    "session.approved",
    "session.approved",
    "session.opened",
    "session.closed",
];

/// `lockstep webhooks status --json` for the server's configuration.
fn status(srv: &TestServer) -> Value {
    let config = srv.config_path.to_str().unwrap();
    let out = common::lockstep_cli(&["--config", config, "--json", "webhooks", "status"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_are_told_in_order_with_signatures_standardwebhooks_verifies() {
    let setup = Setup::new();
    let _receiver = setup.receiver(&[]);
    let srv = TestServer::start("webhooks-walk", POLICY, CALLERS, &setup.config("")).await;
    // Another resource's session is not for this endpoint.
    let other = srv.request("alice", "api:billing", 600).await;
    let s = walk(&srv).await;
    let delivered = setup.wait_for(5).await;
    assert_eq!(kinds(&delivered), WALK);
    let id = s["id"].as_str().unwrap();
    let seqs: Vec<u64> = delivered
        .iter()
        .map(|d| d["data"]["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for d in &delivered {
        let data = &d["data"];
        assert_eq!(data["session"], id);
        assert_eq!(data["resource"], "db:payroll");
        assert_eq!(data["requester"], "token:alice");
        assert_eq!(data["request_hash"], s["request_hash"]);
        assert_ne!(data["session"], other["id"]);
    }
    let requested = &delivered[0]["data"]["next"];
    assert_eq!(requested["command"], format!("lockstep approve {id}"));
    assert_eq!(requested["url"], format!("{}/v1/sessions/{id}", srv.url));
    assert_eq!(delivered[1]["data"]["detail"]["by"], "token:bob");
    assert_eq!(delivered[4]["data"]["detail"]["reason"], "completed");
    // Thin: no credential material, no free-text task.
    for r in setup.records() {
        let body = r["body"].as_str().unwrap();
        for absent in ["BEGIN", "certificate\":", "serial", "test task"] {
            assert!(!body.contains(absent), "{absent} in {body}");
        }
        assert!(r["id"].as_str().unwrap().starts_with("msg_"));
    }
    // The reference verifier refuses the same delivery under another secret.
    let record = serde_json::to_vec(&setup.records()[0]).unwrap();
    let other_secret = setup.dir.path().join("other-secret");
    let refused = common::python::run(
        "webhook_verify.py",
        &[other_secret.to_str().unwrap()],
        &record,
    );
    assert!(
        !refused.status.success(),
        "{}",
        common::output_text(&refused)
    );
    common::python::check(
        "webhook_verify.py",
        &[setup.secret().to_str().unwrap()],
        &record,
    );

    let st = status(&srv);
    assert_eq!(st["endpoint"], "approvers");
    assert_eq!(st["url"], format!("http://127.0.0.1:{}/hooks", setup.port));
    assert_eq!(st["delivered"], 5);
    assert_eq!(st["failures"], 0);
    assert!(st["holder"].is_string(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_everything_after_lockstep_restarts() {
    let setup = Setup::new();
    let srv = TestServer::start("webhooks-down", POLICY, CALLERS, &setup.config("")).await;
    // Nobody listens: issuance goes on, deliveries fail and back off.
    let s = walk(&srv).await;
    let mut st = status(&srv);
    for _ in 0..100 {
        if st["failures"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        st = status(&srv);
    }
    assert!(st["failures"].as_u64().unwrap() >= 2, "{st}");
    assert!(st["next_attempt"].is_string(), "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{st}"
    );
    assert!(
        !st["last_error"]
            .as_str()
            .unwrap()
            .contains("receiver-token")
    );
    assert!(st["behind"].as_u64().unwrap() >= 5, "{st}");

    // lockstep restarts; the receiver comes up: it gets it all, in order.
    let srv = srv.restart().await;
    let _receiver = setup.receiver(&[]);
    let delivered = setup.wait_for(5).await;
    assert_eq!(kinds(&delivered), WALK);
    assert!(delivered.iter().all(|d| d["data"]["session"] == s["id"]));
    let st = status(&srv);
    assert_eq!(st["failures"], 0, "{st}");
    assert!(st["last_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_gets_each_event_at_least_once_and_holds_nothing_up() {
    let setup = Setup::new();
    // The first two answers come after 3 s; lockstep waits 1 s.
    let _receiver = setup.receiver(&["--slow", "2", "3"]);
    let token = common::write(setup.dir.path(), "metrics.token", "webhooks-metrics-token");
    let extra = format!(
        "timeout = \"1s\"\n[metrics]\ntoken = \"file:{}\"\n",
        token.display()
    );
    let srv = TestServer::start("webhooks-slow", POLICY, CALLERS, &setup.config(&extra)).await;
    walk(&srv).await;
    let delivered = setup.wait_for(5).await;
    assert_eq!(kinds(&delivered), WALK);
    // Timed-out attempts were taken up again: the receiver saw the first
    // event more than once, under one webhook-id.
    let first = setup.records()[0]["id"].clone();
    let times = setup.records().iter().filter(|r| r["id"] == first).count();
    assert!(times >= 2, "{:#?}", setup.records());
    // The metrics count the attempts, and the backlog drains.
    let metrics = |srv: &TestServer| {
        let req = srv.http.get(format!("{}/metrics", srv.url));
        async move {
            let text = req
                .bearer_auth("webhooks-metrics-token")
                .send()
                .await
                .unwrap();
            text.text().await.unwrap()
        }
    };
    let mut text = metrics(&srv).await;
    for _ in 0..100 {
        if text.contains("lockstep_webhook_backlog{endpoint=\"approvers\"} 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = metrics(&srv).await;
    }
    assert!(
        text.contains("lockstep_webhook_backlog{endpoint=\"approvers\"} 0"),
        "{text}"
    );
    let count = |outcome: &str| -> u64 {
        let series = format!(
            "lockstep_webhook_deliveries_total{{endpoint=\"approvers\",outcome=\"{outcome}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.parse().unwrap())
    };
    assert!(count("failed") >= 2, "{text}");
    assert_eq!(count("delivered"), 5, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_holding_its_answer_does_not_hold_up_issuance() {
    let setup = Setup::new();
    let release = setup.dir.path().join("release");
    let _receiver = setup.receiver(&["--hold", release.to_str().unwrap()]);
    let srv = TestServer::start(
        "webhooks-hold",
        POLICY,
        CALLERS,
        &setup.config("timeout = \"30s\"\n"),
    )
    .await;
    // The first delivery hangs at the receiver while three sessions go
    // through their whole life.
    for _ in 0..3 {
        walk(&srv).await;
    }
    assert!(setup.records().is_empty());
    std::fs::write(&release, "").unwrap();
    let delivered = setup.wait_for(15).await;
    assert_eq!(kinds(&delivered[..5]), WALK);
}

/// Two replicas on one PostgreSQL database: one delivers at a time, and
/// when it stops the other takes the cursor up where it was.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_once_and_one_takes_over_from_the_other() {
    use common::store::StoreKind;
    use std::io::BufRead as _;

    let setup = Setup::new();
    let _receiver = setup.receiver(&[]);
    let mut srv = TestServer::start_in(
        StoreKind::Postgres,
        "webhooks-replicas",
        POLICY,
        CALLERS,
        &setup.config(""),
    )
    .await;
    let (child, stderr, child_url) =
        common::server::spawn_serve(env!("CARGO_BIN_EXE_lockstep"), &srv.config_path, "warn");
    let _child = common::gateway::Killed(child);
    std::thread::spawn(move || for _ in stderr.lines() {});
    let first = walk(&srv).await;
    let delivered = setup.wait_for(5).await;
    assert_eq!(kinds(&delivered), WALK);
    // Each event was delivered by one replica: once.
    let records = setup.records();
    assert_eq!(records.len(), 5, "{records:#?}");
    assert!(
        delivered
            .iter()
            .all(|d| d["data"]["session"] == first["id"])
    );

    // The in-process replica stops (giving the cursor back if it held
    // it); the child delivers what happens next, through it.
    srv.stop().await;
    srv.url = child_url;
    let second = walk(&srv).await;
    let delivered = setup.wait_for(10).await;
    assert_eq!(kinds(&delivered[5..]), WALK);
    assert!(
        delivered[5..]
            .iter()
            .all(|d| d["data"]["session"] == second["id"])
    );
    let st = status(&srv);
    assert_eq!(st["delivered"], 10, "{st}");
    assert!(st["holder"].is_string(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_notices_reach_every_endpoint_of_the_resource() {
    let setup = Setup::new();
    let _receiver = setup.receiver(&[]);
    // The endpoint asked for approvals only; break-glass notices come
    // anyway (and a plain session's request does not).
    let config = setup.config("").replace(
        r#"events = ["requested", "approved", "opened", "closed"]"#,
        r#"events = ["approved"]"#,
    );
    let srv = TestServer::start("webhooks-break-glass", POLICY, CALLERS, &config).await;
    srv.request("alice", "db:payroll", 600).await;
    let body = serde_json::json!({"resource": "db:prod", "task": "primary down", "duration_secs": 300,
        "profile": "mtls-client", "break_glass": true});
    let (status, s) = srv
        .call("POST", "/v1/sessions", Some("oncall"), Some(body))
        .await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap();
    // Before the review (the payload tells the session's state now).
    let opened = setup.wait_for(2).await;
    assert_eq!(opened[1]["data"]["review"], "awaiting", "{:?}", opened[1]);
    assert_eq!(
        opened[1]["data"]["next"]["command"],
        format!("lockstep review {id} --outcome justified|unjustified --note <why>")
    );
    let (status, body) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/review"),
            Some("carol"),
            Some(serde_json::json!({"outcome": "unjustified", "note": "no incident open"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let delivered = setup.wait_for(4).await;
    assert_eq!(
        kinds(&delivered),
        [
            "session.requested",
            "session.opened",
            "session.reviewed",
            "session.closed"
        ]
    );
    for d in &delivered {
        assert_eq!(d["data"]["session"], id);
        assert_eq!(d["data"]["break_glass"], true, "{d}");
    }
    assert_eq!(delivered[2]["data"]["detail"]["outcome"], "unjustified");
    assert_eq!(delivered[3]["data"]["detail"]["reason"], "revoked");
}
