//! PostgreSQL goes away under load and comes back: while it is down,
//! `/readyz` answers 503 `store_unavailable` and calls are refused fast
//! with that code, nothing half-applied; once it is back, the same
//! process serves again without a restart, and every certificate it
//! acknowledged is on the record. The test runs a PostgreSQL server of
//! its own (`scripts/postgres start`), since it stops it.
#![cfg(feature = "postgres")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::postgres_server::Server;
use common::server::TestServer;
use common::store::TestStore;

const POLICY: &str = r#"
[[resource]]
match = "api:*"
requesters = ["token:svc"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
credentials = 1000
"#;

/// `/readyz`: its status and error code.
async fn ready(srv: &TestServer) -> (u16, Value) {
    let resp = srv
        .http
        .get(format!("{}/readyz", srv.url))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn open_session(srv: &TestServer) -> String {
    let (status, s) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some("svc"),
            Some(json!({"resource": "api:orders", "task": "outage", "duration_secs": 3000, "profile": "mtls-client"})),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    let (status, v) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/approve"),
            Some("bob"),
            Some(json!({"request_hash": s["request_hash"]})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    id
}

/// What the load saw: serials acknowledged, and for each refusal its code
/// and how long the call took.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    refused: Vec<(String, Duration)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_is_refused_fast_and_survived_without_a_restart() {
    let server = Server::start(None);
    let store = TestStore::postgres_on(&server.params).await;
    let srv =
        Arc::new(TestServer::start_in_store(store, "outage", POLICY, &["svc", "bob"], "").await);
    let id = open_session(&srv).await;
    let csr = srv.csr("outage");

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (srv, stop, seen, csr, id) = (
                srv.clone(),
                stop.clone(),
                seen.clone(),
                csr.clone(),
                id.clone(),
            );
            tokio::spawn(async move {
                let path = format!("/v1/sessions/{id}/certificate");
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (status, body) = srv
                        .call("POST", &path, Some("svc"), Some(json!({"csr": csr})))
                        .await;
                    {
                        let mut seen = seen.lock().unwrap();
                        match status {
                            201 => seen
                                .acknowledged
                                .push(body["serial"].as_str().unwrap().to_owned()),
                            503 => seen.refused.push((
                                body["error"].as_str().unwrap_or("").to_owned(),
                                started.elapsed(),
                            )),
                            other => panic!("a mint answered {other}: {body}"),
                        }
                    }
                    if status == 503 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let acknowledged = || seen.lock().unwrap().acknowledged.len();
    while acknowledged() < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The outage.
    server.script("pause");
    let before = acknowledged();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = ready(&srv).await;
        if status == 503 {
            assert_eq!(body["error"], "store_unavailable", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} without PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = acknowledged();
    assert!(
        during - before <= 3,
        "{} certificates acknowledged without PostgreSQL",
        during - before
    );

    server.script("resume");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(&srv).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = acknowledged();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged() < back + 20 {
        assert!(
            Instant::now() < deadline,
            "no certificates after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }

    // Refused fast, always as the store being unavailable.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        !seen.refused.is_empty(),
        "nothing was refused during the outage"
    );
    for (code, took) in &seen.refused {
        assert_eq!(code, "store_unavailable");
        assert!(*took < Duration::from_secs(11), "a refusal took {took:?}");
    }
    // Every acknowledged certificate is on the record as issued, once.
    let store = srv.store();
    for serial in &seen.acknowledged {
        let state = store
            .texts(&format!(
                "SELECT state FROM credentials WHERE serial = '{serial}'"
            ))
            .await;
        assert_eq!(state, ["issued"], "{serial}");
        let minted = store
            .count(&format!(
                "SELECT COUNT(*) FROM events WHERE kind = 'minted' AND body LIKE '%{serial}%'"
            ))
            .await;
        assert_eq!(minted, 1, "{serial}");
    }
    let (ok, text) = common::audit_verify_config(&srv.config_path);
    assert!(ok, "{text}");
}
