//! Several `lockstep serve` processes on one store (a SQLite file, a
//! PostgreSQL database) keep every rule:
//! approvals reaching different processes open a session once, mints
//! through both never pass a session's count, a process killed or
//! restarted mid-run never voids the other's in-flight mints, every
//! acknowledged credential is on the record, and the trail verifies.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use common::server::TestServer;
use common::store::StoreKind;

const POLICY: &str = r#"
[[resource]]
match = "db:*"
requesters = ["token:alice"]
approvers = ["token:bob", "token:carol"]
quorum = 2
max_duration = "1h"
credentials = 2
profiles = ["mtls-client"]

[[resource]]
match = "load:*"
requesters = ["token:alice"]
approvers = ["token:bob", "token:carol"]
quorum = 1
max_duration = "1h"
credentials = 1000
profiles = ["mtls-client"]
"#;

const AUDIT: &str = "[audit]\ncheckpoint_every = 8\ncheckpoint_interval = \"1s\"\n";

/// A `lockstep serve` child on the server's configuration; its stderr is
/// drained by a thread. Returns the child and its URL.
fn serve(srv: &TestServer) -> (Child, String) {
    let (child, stderr, url) =
        common::server::spawn_serve(env!("CARGO_BIN_EXE_lockstep"), &srv.config_path, "warn");
    std::thread::spawn(move || for _ in stderr.lines() {});
    (child, url)
}

fn signal(child: &mut Child, sig: &str) {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

/// A call to the process at `url`; `None` when the connection failed (a
/// process being killed).
async fn call(
    srv: &TestServer,
    url: &str,
    who: &str,
    path: &str,
    body: Value,
) -> Option<(u16, Value)> {
    let resp = srv
        .http
        .post(format!("{url}{path}"))
        .bearer_auth(srv.token(who))
        .json(&body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

/// An open session of 1000 credentials for the steady load through A.
async fn load_session(srv: &TestServer, url: &str) -> String {
    let body = json!({"resource": "load:a", "task": "load", "duration_secs": 600, "profile": "mtls-client"});
    let (status, s) = call(srv, url, "alice", "/v1/sessions", body).await.unwrap();
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sessions/{id}/approve");
    let vote = json!({"request_hash": s["request_hash"]});
    let (status, _) = call(srv, url, "bob", &path, vote).await.unwrap();
    assert_eq!(status, 200);
    id
}

on_both_stores!(multi two_processes_on_one_store_keep_every_rule);
async fn two_processes_on_one_store_keep_every_rule(kind: StoreKind) {
    let mut srv =
        TestServer::start_in(kind, "shared", POLICY, &["alice", "bob", "carol"], AUDIT).await;
    srv.stop().await;
    let (mut a, url_a) = serve(&srv);
    let (b, url_b) = serve(&srv);
    let srv = Arc::new(srv);
    let b = Arc::new(Mutex::new((b, url_b)));
    let csr = srv.csr("shared");

    // Approvals reaching the two processes at once open each session once.
    let mut sessions = Vec::new();
    for i in 0..24 {
        let body = json!({"resource": format!("db:s{i}"), "task": "shared store", "duration_secs": 600, "profile": "mtls-client"});
        let (status, s) = call(&srv, &url_a, "alice", "/v1/sessions", body)
            .await
            .unwrap();
        assert_eq!(status, 201, "{s}");
        let id = s["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/sessions/{id}/approve");
        let vote = json!({"request_hash": s["request_hash"]});
        let url_b = b.lock().unwrap().1.clone();
        let (x, y) = tokio::join!(
            call(&srv, &url_a, "bob", &path, vote.clone()),
            call(&srv, &url_b, "carol", &path, vote.clone()),
        );
        assert_eq!((x.unwrap().0, y.unwrap().0), (200, 200));
        let opened = srv.events(&id).await;
        assert_eq!(
            opened.iter().filter(|k| *k == "opened").count(),
            1,
            "{opened:?}"
        );
        sessions.push(id);
    }

    // Mints through both processes while B is killed and restarted again
    // and again, and some sessions are closed through B.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restarts = {
        let (srv, b, stop) = (srv.clone(), b.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let srv = srv.clone();
                let b = b.clone();
                tokio::task::spawn_blocking(move || {
                    let mut b = b.lock().unwrap();
                    signal(&mut b.0, if n % 2 == 0 { "-KILL" } else { "-TERM" });
                    *b = serve(&srv);
                })
                .await
                .unwrap();
                n += 1;
            }
            n
        })
    };
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String, char)>::new()));
    // Steady load through A, so that B's restarts meet mints of A's in
    // flight.
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (srv, stop, ack, csr, url_a) = (
                srv.clone(),
                stop.clone(),
                acknowledged.clone(),
                csr.clone(),
                url_a.clone(),
            );
            tokio::spawn(async move {
                let mut id = load_session(&srv, &url_a).await;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = format!("/v1/sessions/{id}/certificate");
                    let answer = call(&srv, &url_a, "alice", &path, json!({"csr": csr})).await;
                    match answer {
                        Some((201, body)) => ack.lock().unwrap().push((
                            id.clone(),
                            body["serial"].as_str().unwrap().to_owned(),
                            'A',
                        )),
                        // Its 1000 credentials used up: the next session.
                        Some((409, body)) if body["error"] == "credential_limit_reached" => {
                            id = load_session(&srv, &url_a).await;
                        }
                        other => panic!("process A answered {other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut mints = Vec::new();
    for (i, id) in sessions.iter().enumerate() {
        for k in 0..5 {
            let (srv, b, ack, csr, id, url_a) = (
                srv.clone(),
                b.clone(),
                acknowledged.clone(),
                csr.clone(),
                id.clone(),
                url_a.clone(),
            );
            mints.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200 * i as u64 + 7 * k)).await;
                let via_a = k % 2 == 0;
                let url = if via_a {
                    url_a
                } else {
                    b.lock().unwrap().1.clone()
                };
                let path = format!("/v1/sessions/{id}/certificate");
                let answer = call(&srv, &url, "alice", &path, json!({"csr": csr})).await;
                match answer {
                    Some((201, body)) => ack.lock().unwrap().push((
                        id,
                        body["serial"].as_str().unwrap().to_owned(),
                        if via_a { 'A' } else { 'B' },
                    )),
                    Some((409, body)) => assert!(
                        ["credential_limit_reached", "session_closed"]
                            .contains(&body["error"].as_str().unwrap()),
                        "{body}"
                    ),
                    // B may be killed under this call; A never fails.
                    other => assert!(!via_a, "process A answered {other:?}"),
                }
            }));
        }
        if i % 4 == 3 {
            let url_b = b.lock().unwrap().1.clone();
            let path = format!("/v1/sessions/{id}/close");
            let _ = call(&srv, &url_b, "alice", &path, json!({})).await;
        }
    }
    for m in mints {
        m.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let restarted = restarts.await.unwrap();
    assert!(restarted >= 5, "B was restarted {restarted} times");
    signal(&mut a, "-TERM");
    signal(&mut b.lock().unwrap().0, "-TERM");

    // One more start recovers what the last kill left, then stops.
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let mut srv = srv.restart().await;
    srv.stop().await;

    let store = srv.store();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 12, "{} minted", acknowledged.len());
    let mut per_session: HashMap<String, usize> = HashMap::new();
    let mut owners_a = HashSet::new();
    for (id, serial, via) in &acknowledged {
        *per_session.entry(id.clone()).or_default() += 1;
        let state = store
            .texts(&format!(
                "SELECT state FROM credentials WHERE serial = '{serial}'"
            ))
            .await;
        assert_eq!(state, ["issued"], "acknowledged {serial} is issued");
        if *via == 'A' {
            let owner = store
                .texts(&format!(
                    "SELECT owner FROM credentials WHERE serial = '{serial}'"
                ))
                .await;
            owners_a.extend(owner);
        }
        let minted = store
            .count(&format!(
                "SELECT COUNT(*) FROM events WHERE kind = 'minted' AND body LIKE '%{serial}%'"
            ))
            .await;
        assert_eq!(minted, 1, "{serial} is on the record once");
    }
    // Never past a session's count, counting what the store holds too.
    for id in &sessions {
        assert!(per_session.get(id).copied().unwrap_or(0) <= 2);
        let issued = store
            .count(&format!(
                "SELECT COUNT(*) FROM credentials WHERE session_id = '{id}' \
                 AND state IN ('issued', 'withheld') AND counted"
            ))
            .await;
        assert!(issued <= 2, "session {id} minted {issued}");
    }
    // The live process's in-flight mints were never voided.
    let voided = store
        .texts("SELECT body FROM events WHERE kind = 'voided'")
        .await;
    for body in &voided {
        let owner = serde_json::from_str::<Value>(body).unwrap()["owner"].clone();
        assert!(
            !owners_a.contains(owner.as_str().unwrap_or("")),
            "A's reservation voided: {body}"
        );
    }
    let stuck = store
        .count("SELECT COUNT(*) FROM credentials WHERE state = 'reserved'")
        .await;
    assert_eq!(stuck, 0, "nothing left reserved");
    let (ok, text) = common::audit_verify_config(&srv.config_path);
    assert!(ok, "{text}");
}
