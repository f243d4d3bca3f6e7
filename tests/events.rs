//! The committed-event stream (`GET /v1/events`) against a running
//! service: events after commit with the audit sequence number as id,
//! resuming without gap or duplicate while writes go on, filters, who sees
//! what (tenants, gateways), heartbeats, a slow subscriber, two processes
//! on one store, and a real EventSource client reconnecting by itself.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::server::TestServer;
use common::sse::{self, EventStream, Frame};

const POLICY: &str = r#"
auditors = ["token:auditor"]

[[tenant]]
name = "acme"
members = ["token:acme-*"]
auditors = ["token:acme-audit"]

[[tenant]]
name = "globex"
members = ["token:globex-*"]
auditors = ["token:globex-audit"]

[[resource]]
match = "db:*"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]

[[resource]]
match = "plc:*"
tenant = "acme"
requesters = ["token:acme-vendor"]
approvers = ["token:acme-lead"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]

[[resource]]
match = "scada:*"
tenant = "globex"
requesters = ["token:globex-vendor"]
approvers = ["token:globex-lead"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]

[[gateway]]
identities = ["token:gw-line1"]
resources = ["plc:line1*"]
tenant = "acme"
"#;

const CALLERS: &[&str] = &[
    "alice",
    "bob",
    "auditor",
    "acme-vendor",
    "acme-lead",
    "acme-audit",
    "globex-vendor",
    "globex-lead",
    "globex-audit",
    "gw-line1",
];

/// Starts a service with short heartbeats and polls, and `events` more
/// lines of its `[events]` section.
async fn start(name: &str, events: &str) -> TestServer {
    let config = format!("[events]\nheartbeat = \"300ms\"\npoll = \"200ms\"\n{events}");
    TestServer::start(name, POLICY, CALLERS, &config).await
}

async fn follow(srv: &TestServer, who: &str, query: &str) -> EventStream {
    sse::connect(&srv.http, &srv.url, srv.token(who), query, None).await
}

/// Requested by `requester`, opened by `approver`, closed by `requester`;
/// returns the session id.
async fn lifecycle(srv: &TestServer, requester: &str, approver: &str, resource: &str) -> String {
    let s = srv.request(requester, resource, 600).await;
    let (status, body) = srv.vote(approver, &s, "approve").await;
    assert_eq!(status, 200, "{body}");
    let id = s["id"].as_str().unwrap().to_owned();
    close(srv, requester, &id).await;
    id
}

async fn close(srv: &TestServer, who: &str, id: &str) {
    let (status, body) = srv
        .call("POST", &format!("/v1/sessions/{id}/close"), Some(who), None)
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The whole trail as a top-level auditor reads it from `GET /v1/audit`.
async fn audit_trail(srv: &TestServer) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = srv
            .call(
                "GET",
                &format!("/v1/audit?after={after}&limit=1000"),
                Some("auditor"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        entries.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return entries,
        }
    }
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn events_follow_commits_with_the_audit_sequence_number_as_id() {
    let srv = start("events-basic", "").await;
    let mut replay = follow(&srv, "auditor", "?after=0").await;
    let id = lifecycle(&srv, "alice", "bob", "db:payroll").await;
    let received = replay.until("closed", &id).await;

    // From the first entry, every one, in order: a top-level auditor sees
    // the whole trail of a lockstep without tenant sessions.
    let expected: Vec<u64> = (1..=received.len() as u64).collect();
    assert_eq!(seqs(&received), expected);
    let trail = audit_trail(&srv).await;
    for (event, entry) in received.iter().zip(&trail) {
        assert_eq!(event["seq"], entry["seq"]);
        assert_eq!(event["kind"], entry["kind"]);
        assert_eq!(event["session"], entry["session"]);
        let body: Value = serde_json::from_str(entry["body"].as_str().unwrap()).unwrap();
        let mut fields = event["fields"].clone();
        fields["event"] = event["kind"].clone();
        assert_eq!(fields, body, "fields are the recorded event");
        let at = lockstep::clock::Timestamp::from_unix(entry["at"].as_i64().unwrap());
        assert_eq!(event["at"], at.to_string());
    }
    let of_session: Vec<&Value> = received.iter().filter(|e| e["session"] == id).collect();
    let kinds: Vec<&str> = of_session
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["requested", "approved", "opened", "closed"]);
    for e in &of_session {
        assert_eq!(e["resource"], "db:payroll");
        assert!(e.get("tenant").is_none(), "no tenant: {e}");
    }
    assert_eq!(of_session[3]["fields"]["reason"], "completed");
    assert_eq!(of_session[3]["fields"]["by"], "token:alice");
    assert!(of_session[2]["fields"]["closes_at"].is_string());

    // Without a starting point: from now on, nothing replayed.
    let mut now = follow(&srv, "auditor", "").await;
    let second = lifecycle(&srv, "alice", "bob", "db:other").await;
    let after_now = now.until("closed", &second).await;
    assert_eq!(after_now[0]["session"], second);
    assert_eq!(after_now[0]["kind"], "requested");
    assert_eq!(
        after_now[0]["seq"].as_u64().unwrap(),
        received.last().unwrap()["seq"].as_u64().unwrap() + 1
    );
}

#[tokio::test]
async fn an_event_is_committed_before_it_is_published() {
    let srv = start("events-commit", "").await;
    let mut stream = follow(&srv, "auditor", "").await;
    let s = srv.request("alice", "db:payroll", 600).await;
    let id = s["id"].as_str().unwrap().to_owned();
    let closing = {
        let srv = &srv;
        let id = id.clone();
        async move {
            srv.vote("bob", &s, "approve").await;
            close(srv, "alice", &id).await;
        }
    };
    let reading = async {
        let mut checked = Vec::new();
        loop {
            let e = stream.event().await;
            // Another connection reads the store: the entry is there.
            let seq = e["seq"].as_u64().unwrap();
            let (status, page) = srv
                .call(
                    "GET",
                    &format!("/v1/audit?after={}&limit=1", seq - 1),
                    Some("auditor"),
                    None,
                )
                .await;
            assert_eq!(status, 200);
            assert_eq!(
                page["entries"][0]["seq"], seq,
                "event {seq} is in the store"
            );
            checked.push(e["kind"].as_str().unwrap().to_owned());
            if e["kind"] == "closed" {
                return checked;
            }
        }
    };
    let ((), checked) = tokio::join!(closing, reading);
    assert_eq!(checked, ["requested", "approved", "opened", "closed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_last_event_id_while_writes_go_on_has_no_gap_and_no_duplicate() {
    let srv = Arc::new(start("events-resume", "").await);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (srv, stop) = (srv.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    lifecycle(&srv, "alice", "bob", &format!("db:w{w}-{n}")).await;
                    n += 1;
                }
                n
            })
        })
        .collect();

    let mut received: Vec<u64> = Vec::new();
    let mut stream = follow(&srv, "auditor", "?after=0").await;
    // Reconnect after a few events each time, in every way a client may.
    for (round, take) in [5usize, 1, 9, 3, 14, 2, 7].into_iter().enumerate() {
        for _ in 0..take {
            received.push(stream.event().await["seq"].as_u64().unwrap());
        }
        drop(stream);
        let last = *received.last().unwrap();
        let token = srv.token("auditor");
        stream = match round % 3 {
            0 => sse::connect(&srv.http, &srv.url, token, "", Some(last)).await,
            1 => sse::connect(&srv.http, &srv.url, token, &format!("?after={last}"), None).await,
            // Both: the header wins (a browser keeps the URL it started with).
            _ => sse::connect(&srv.http, &srv.url, token, "?after=0", Some(last)).await,
        };
    }
    stop.store(true, Ordering::Relaxed);
    let mut sessions = 0;
    for w in writers {
        sessions += w.await.unwrap();
    }
    assert!(
        sessions >= 4,
        "writes went on meanwhile: {sessions} sessions"
    );
    let marker = lifecycle(&srv, "alice", "bob", "db:marker").await;
    received.extend(seqs(&stream.until("closed", &marker).await));

    let unique: BTreeSet<u64> = received.iter().copied().collect();
    assert_eq!(unique.len(), received.len(), "no duplicate");
    let expected: Vec<u64> = (1..=*received.last().unwrap()).collect();
    assert_eq!(received, expected, "no gap, in order");
    assert_eq!(
        seqs(&audit_trail(&srv).await),
        expected,
        "exactly the trail"
    );
}

#[tokio::test]
async fn resource_filters_and_malformed_parameters() {
    let srv = start("events-filter", "").await;
    let mut pay = follow(&srv, "auditor", "?resource=db:pay*").await;
    let mut exact = follow(&srv, "auditor", "?resource=db:other").await;
    lifecycle(&srv, "alice", "bob", "db:other").await;
    let payroll = lifecycle(&srv, "alice", "bob", "db:payroll").await;
    let other = lifecycle(&srv, "alice", "bob", "db:other").await;
    let got = pay.until("closed", &payroll).await;
    assert!(got.iter().all(|e| e["resource"] == "db:payroll"), "{got:?}");
    assert_eq!(got.len(), 4);
    let got = exact.until("closed", &other).await;
    assert_eq!(got.len(), 8, "two sessions of db:other: {got:?}");
    assert!(got.iter().all(|e| e["resource"] == "db:other"));

    let head = seqs(&audit_trail(&srv).await).last().copied().unwrap();
    let auditor = srv.token("auditor");
    let bad: Vec<(&str, Option<String>, u16)> = vec![
        ("?resource=db:*x", None, 400),
        ("?resource=", None, 400),
        ("?after=-1", None, 400),
        ("?after=abc", None, 400),
        ("?after=99999999999999999999999", None, 400),
        ("?colour=red", None, 400),
        ("", Some("abc".into()), 400),
        ("", Some("1e3".into()), 400),
        ("", Some(String::new()), 400),
        ("", Some((head + 10).to_string()), 400),
        ("?after=1000000", None, 400),
    ];
    for (query, header, want) in bad {
        let mut req = srv
            .http
            .get(format!("{}/v1/events{query}", srv.url))
            .bearer_auth(auditor);
        if let Some(h) = &header {
            req = req.header("last-event-id", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), want, "{query} {header:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["error"], "invalid_request",
            "{query} {header:?}: {body}"
        );
        assert!(body["message"].as_str().unwrap().len() > 10);
    }
    // Two Last-Event-ID headers.
    let resp = srv
        .http
        .get(format!("{}/v1/events", srv.url))
        .bearer_auth(auditor)
        .header("last-event-id", "1")
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn who_may_follow_the_stream() {
    let srv = start("events-who", "").await;
    // No credential: 401, like every endpoint.
    let resp = srv
        .http
        .get(format!("{}/v1/events", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A requester and an approver with no auditor or gateway role: 403,
    // recorded.
    for who in ["alice", "bob", "acme-vendor"] {
        let resp = sse::request(&srv.http, &srv.url, srv.token(who), "?after=0", None).await;
        assert_eq!(resp.status(), 403, "{who}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "forbidden");
    }
    let trail = audit_trail(&srv).await;
    let refused: Vec<&Value> = trail
        .iter()
        .filter(|e| e["kind"] == "refused" && e["body"].as_str().unwrap().contains("\"events\""))
        .collect();
    assert_eq!(refused.len(), 3, "{trail:?}");
    assert!(refused[0]["body"].as_str().unwrap().contains("token:alice"));
    // Auditors of a tenant and gateways may.
    for who in ["auditor", "acme-audit", "globex-audit", "gw-line1"] {
        let resp = sse::request(&srv.http, &srv.url, srv.token(who), "", None).await;
        assert_eq!(resp.status(), 200, "{who}");
    }
}

/// One entry of the trail with its session's resource and tenant.
struct Row {
    seq: u64,
    kind: String,
    resource: Option<String>,
    tenant: Option<String>,
}

/// The trail straight from the SQLite file, to compute by other means what
/// each subscriber should see.
fn trail_from_file(srv: &TestServer) -> Vec<Row> {
    let c = rusqlite::Connection::open(srv.dir.path().join("lockstep.db")).unwrap();
    let mut stmt = c
        .prepare(
            "SELECT e.seq, e.kind, s.resource, s.tenant FROM events e
             LEFT JOIN sessions s ON s.id = e.session_id ORDER BY e.seq",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(Row {
            seq: r.get::<_, i64>(0)? as u64,
            kind: r.get(1)?,
            resource: r.get(2)?,
            tenant: r.get(3)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[tokio::test]
async fn tenants_and_gateways_see_only_their_sessions() {
    let srv = start("events-tenants", "").await;
    let mut auditor = follow(&srv, "auditor", "?after=0").await;
    let mut acme = follow(&srv, "acme-audit", "?after=0").await;
    let mut globex = follow(&srv, "globex-audit", "?after=0").await;
    let mut gateway = follow(&srv, "gw-line1", "?after=0").await;

    lifecycle(&srv, "alice", "bob", "db:payroll").await;
    // An acme session that globex's lead tries to approve: refused and
    // recorded against the session.
    let press = srv.request("acme-vendor", "plc:line1/press", 600).await;
    let (status, _) = srv.vote("globex-lead", &press, "approve").await;
    assert_eq!(status, 404);
    let (status, _) = srv.vote("acme-lead", &press, "approve").await;
    assert_eq!(status, 200);
    close(&srv, "acme-vendor", press["id"].as_str().unwrap()).await;
    lifecycle(&srv, "acme-vendor", "acme-lead", "plc:line2").await;
    lifecycle(&srv, "globex-vendor", "globex-lead", "scada:pump").await;
    // globex names a resource like acme's gateway follows; still not its.
    let (status, _) = srv
        .call("POST", "/v1/sessions", Some("globex-vendor"),
            Some(json!({"resource": "plc:line1/x", "task": "t", "duration_secs": 60, "profile": "mtls-client"})))
        .await;
    assert_eq!(status, 403);
    // Markers: the last session each subscriber sees.
    let db_end = lifecycle(&srv, "alice", "bob", "db:end").await;
    let plc_end = lifecycle(&srv, "acme-vendor", "acme-lead", "plc:line1/end").await;
    let scada_end = lifecycle(&srv, "globex-vendor", "globex-lead", "scada:end").await;

    let got_auditor = auditor.until("closed", &db_end).await;
    let got_acme = acme.until("closed", &plc_end).await;
    let got_globex = globex.until("closed", &scada_end).await;
    let got_gateway = gateway.until("closed", &plc_end).await;

    let trail = trail_from_file(&srv);
    let upto = |end: &[Value]| end.last().unwrap()["seq"].as_u64().unwrap();
    let expect = |upto: u64, sees: &dyn Fn(&Row) -> bool| -> Vec<u64> {
        trail
            .iter()
            .filter(|r| r.seq <= upto && sees(r))
            .map(|r| r.seq)
            .collect()
    };
    // Top-level auditors: sessions without tenant, entries of no session.
    let want = expect(upto(&got_auditor), &|r| r.tenant.is_none());
    assert_eq!(seqs(&got_auditor), want);
    // A tenant's auditors: its sessions, every kind.
    let want = expect(upto(&got_acme), &|r| r.tenant.as_deref() == Some("acme"));
    assert_eq!(seqs(&got_acme), want);
    assert!(got_acme.iter().any(|e| e["kind"] == "refused"));
    assert!(got_acme.iter().all(|e| e["tenant"] == "acme"));
    let want = expect(upto(&got_globex), &|r| {
        r.tenant.as_deref() == Some("globex")
    });
    assert_eq!(seqs(&got_globex), want);
    // The gateway: requested, opened, minted, closed of plc:line1* in acme.
    let want = expect(upto(&got_gateway), &|r| {
        r.tenant.as_deref() == Some("acme")
            && r.resource
                .as_deref()
                .is_some_and(|x| x.starts_with("plc:line1"))
            && ["requested", "opened", "minted", "closed"].contains(&r.kind.as_str())
    });
    assert_eq!(seqs(&got_gateway), want);
    let kinds: BTreeSet<&str> = got_gateway
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["requested", "opened", "closed"]));
    assert!(
        got_gateway
            .iter()
            .all(|e| e["resource"].as_str().unwrap().starts_with("plc:line1"))
    );
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeats() {
    let srv = start("events-idle", "").await;
    let mut stream = follow(&srv, "auditor", "").await;
    let started = Instant::now();
    assert_eq!(
        stream.frame_within(Duration::from_secs(5)).await,
        Some(Frame::Retry(1000)),
        "a stream starts with its reconnection delay"
    );
    let mut beats = 0;
    while beats < 3 {
        match stream.frame_within(Duration::from_secs(5)).await {
            Some(Frame::Comment(c)) => {
                assert_eq!(c, "heartbeat");
                beats += 1;
            }
            other => panic!("only heartbeats on an idle stream, got {other:?}"),
        }
    }
    // Three heartbeats of 300 ms each: about a second, not more than a few.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_holds_up_nothing_and_misses_nothing() {
    // A buffer of two events: a subscriber that stops reading falls behind
    // almost at once and must go back to the store.
    let srv = start("events-slow", "buffer = 2\n").await;
    let mut slow = follow(&srv, "auditor", "?after=0").await;
    let first = slow.event().await["seq"].as_u64().unwrap();
    assert_eq!(first, 1);
    let csr = srv.csr("slow");
    let started = Instant::now();
    let mut last = String::new();
    for i in 0..40 {
        let s = srv.request("alice", &format!("db:slow{i}"), 600).await;
        srv.vote("bob", &s, "approve").await;
        let id = s["id"].as_str().unwrap();
        let (status, body) = srv.certificate("alice", id, &csr).await;
        assert_eq!(status, 201, "{body}");
        close(&srv, "alice", id).await;
        last = id.to_owned();
    }
    let issuing = started.elapsed();
    // Each session is five commits; nothing waited for the subscriber.
    assert!(issuing < Duration::from_secs(60), "{issuing:?}");
    // It reads again: every event after the first, in order.
    let rest = slow.until("closed", &last).await;
    let expected: Vec<u64> = (2..=rest.len() as u64 + 1).collect();
    assert_eq!(seqs(&rest), expected);
    assert_eq!(rest.iter().filter(|e| e["kind"] == "minted").count(), 40);
}

/// Drains a child's stderr so it never blocks on a full pipe.
fn drain(stderr: std::io::BufReader<std::process::ChildStderr>) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in stderr.lines() {
            match line {
                Ok(l) => eprintln!("[serve] {l}"),
                Err(_) => return,
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_one_process_sees_the_commits_of_another() {
    let mut srv = start("events-two", "").await;
    srv.stop().await;
    let (mut a, err_a) = srv.serve_process("warn");
    drain(err_a);
    let url_a = srv.url.clone();
    let (mut b, err_b) = srv.serve_process("warn");
    drain(err_b);
    let url_b = srv.url.clone();
    assert_ne!(url_a, url_b);

    let mut on_a = sse::connect(&srv.http, &url_a, srv.token("auditor"), "?after=0", None).await;
    // Committed by B: A learns of it by polling the shared file.
    srv.url = url_b;
    let by_b = lifecycle(&srv, "alice", "bob", "db:via-b").await;
    let mut got = on_a.until("closed", &by_b).await;
    // Committed by A itself: signalled at once.
    srv.url = url_a;
    let by_a = lifecycle(&srv, "alice", "bob", "db:via-a").await;
    got.extend(on_a.until("closed", &by_a).await);
    let expected: Vec<u64> = (1..=got.len() as u64).collect();
    assert_eq!(
        seqs(&got),
        expected,
        "both processes' commits, in order, once"
    );
    let started = got
        .iter()
        .filter(|e| e["kind"] == "service_started")
        .count();
    assert_eq!(started, 3, "the first start and both processes'");
    for child in [&mut a, &mut b] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// On PostgreSQL another process's commits wake a subscriber at once
/// (LISTEN/NOTIFY), not at the next poll: with polling an hour apart,
/// they still arrive within seconds.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_another_process_commits_wake_a_subscriber_at_once() {
    let config = "[events]\nheartbeat = \"300ms\"\npoll = \"1h\"\n";
    let mut srv = TestServer::start_in(
        common::store::StoreKind::Postgres,
        "events-pg",
        POLICY,
        CALLERS,
        config,
    )
    .await;
    srv.stop().await;
    let (a, err_a) = srv.serve_process("warn");
    drain(err_a);
    let _a = KillOnDrop(a);
    let url_a = srv.url.clone();
    let (b, err_b) = srv.serve_process("warn");
    drain(err_b);
    let _b = KillOnDrop(b);
    let mut on_a = sse::connect(&srv.http, &url_a, srv.token("auditor"), "?after=0", None).await;
    // Committed by B only.
    let by_b = lifecycle(&srv, "alice", "bob", "db:via-b").await;
    let got = tokio::time::timeout(Duration::from_secs(10), on_a.until("closed", &by_b))
        .await
        .expect("B's commits reach A's subscriber without waiting for a poll");
    let expected: Vec<u64> = (1..=got.len() as u64).collect();
    assert_eq!(seqs(&got), expected, "in order, once");
}

/// A child process killed when the test ends, passed or failed.
#[cfg(feature = "postgres")]
struct KillOnDrop(std::process::Child);

#[cfg(feature = "postgres")]
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The EventSource client of `tests/eventsource`, installed.
fn eventsource_client() -> std::path::PathBuf {
    common::node::installed("eventsource", &["follow.mjs"], "eventsource")
}

/// A TCP proxy in front of the service whose connections the test cuts.
struct Proxy {
    port: u16,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let list = connections.clone();
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                let relay = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                list.lock().unwrap().push(relay.abort_handle());
            }
        });
        Self {
            port,
            connections,
            accepting,
        }
    }

    /// Drops every open connection; returns how many there were.
    fn cut(&self) -> usize {
        let open: Vec<_> = self.connections.lock().unwrap().drain(..).collect();
        let n = open.iter().filter(|c| !c.is_finished()).count();
        open.iter().for_each(tokio::task::AbortHandle::abort);
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_eventsource_client_reconnects_by_itself_and_misses_nothing() {
    let client = eventsource_client();
    let srv = Arc::new(start("events-es", "").await);
    let proxy = Proxy::start(srv.addr).await;
    let mut node = common::tpm::spawn(
        std::process::Command::new("node")
            .arg(client.join("follow.mjs"))
            .arg(format!(
                "https://127.0.0.1:{}/v1/events?after=0",
                proxy.port
            ))
            .env("LOCKSTEP_TOKEN", srv.token("auditor"))
            .env("NODE_EXTRA_CA_CERTS", srv.root_pem())
            .stdout(std::process::Stdio::piped()),
    )
    .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (srv, stop) = (srv.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                lifecycle(&srv, "alice", "bob", &format!("db:es{n}")).await;
                n += 1;
            }
        })
    };

    let mut events: Vec<Value> = Vec::new();
    let mut reconnects = 0;
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("the client prints within 30 s")
            .expect("the client runs")
    };
    // Cut the connection three times, each after the client noticed the
    // last cut and got a few events on its new connection.
    for round in 0..3 {
        let mut since_reconnect = 0;
        while reconnects < round || since_reconnect < 3 {
            let line = next().await;
            match line["type"].as_str().unwrap() {
                "reconnecting" => {
                    reconnects += 1;
                    since_reconnect = 0;
                }
                _ => {
                    events.push(line);
                    since_reconnect += 1;
                }
            }
        }
        assert_eq!(proxy.cut(), 1, "one connection to cut");
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let marker = lifecycle(&srv, "alice", "bob", "db:es-marker").await;
    loop {
        let line = next().await;
        match line["type"].as_str().unwrap() {
            "reconnecting" => reconnects += 1,
            _ => {
                let done = line["type"] == "closed" && line["data"]["session"] == marker;
                events.push(line);
                if done {
                    break;
                }
            }
        }
    }
    node.kill().unwrap();
    node.wait().unwrap();

    assert!(reconnects >= 3, "the client noticed each cut: {reconnects}");
    for e in &events {
        assert_ne!(e["type"], "stream_error", "{e}");
        assert_eq!(e["lastEventId"], e["data"]["seq"].to_string(), "{e}");
        assert_eq!(e["type"], e["data"]["kind"], "{e}");
    }
    let got: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["seq"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=got.len() as u64).collect();
    assert_eq!(
        got, expected,
        "every event once, in order, across three reconnections"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_stream() {
    let srv = start("events-openapi", "").await;
    let (status, doc) = srv.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let get = &doc["paths"]["/v1/events"]["get"];
    let stream = &get["responses"]["200"]["content"]["text/event-stream"];
    assert_eq!(
        stream["schema"]["$ref"], "#/components/schemas/EventView",
        "{get}"
    );
    let params: Vec<(&str, &str)> = get["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["in"].as_str().unwrap()))
        .collect();
    for want in [
        ("after", "query"),
        ("resource", "query"),
        ("Last-Event-ID", "header"),
    ] {
        assert!(params.contains(&want), "{want:?} in {params:?}");
    }
    let view = &doc["components"]["schemas"]["EventView"];
    for field in [
        "seq", "at", "session", "resource", "tenant", "kind", "fields",
    ] {
        assert!(view["properties"][field].is_object(), "{field} in {view}");
    }
}
