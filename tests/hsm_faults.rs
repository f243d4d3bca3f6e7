//! The SoftHSM2 token goes away under a running service and comes back.
//! Its own test binary: the token directory of this process is moved away,
//! which would disturb any other test sharing it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::server::TestServer;
use common::softhsm;

const POLICY: &str = r#"
[[resource]]
match = "api:*"
requesters = ["token:svc"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
credentials = 10
"#;

/// Polls `/readyz` until it answers `want` (or fails after `limit`).
async fn readyz_becomes(srv: &TestServer, want: u16, limit: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (status, body) = srv.call("GET", "/readyz", None, None).await;
        if status == want {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "/readyz still {status} after {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes the token away by moving `what` aside, checks the outage, puts it
/// back and checks recovery. `minted` is the session's count before.
async fn outage_and_recovery(srv: &TestServer, id: &str, pem: &str, what: &Path, minted: u64) {
    let away = what.with_extension("away");
    std::fs::rename(what, &away).unwrap();

    let body = readyz_becomes(srv, 503, Duration::from_secs(10)).await;
    assert_eq!(body["error"], "key_backend_unavailable", "{body}");
    // Concurrent mints during the outage: every one refused fast, none
    // counted against the session, no credential recorded.
    let started = Instant::now();
    let answers =
        futures_util::future::join_all((0..8).map(|_| srv.certificate("svc", id, pem))).await;
    for (status, body) in answers {
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("key_backend_unavailable")),
            "{body}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("unavailable"), "{message}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let view = srv.session("svc", id).await;
    assert_eq!(
        (view["state"].as_str(), view["credentials_minted"].as_u64()),
        (Some("open"), Some(minted)),
        "{view}"
    );
    let events = srv.events(id).await;
    let minted_events = events.iter().filter(|e| *e == "minted").count() as u64;
    assert_eq!(minted_events, minted, "{events:?}");

    std::fs::rename(&away, what).unwrap();
    readyz_becomes(srv, 200, Duration::from_secs(10)).await;
    let (status, body) = srv.certificate("svc", id, pem).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        srv.session("svc", id).await["credentials_minted"],
        minted + 1
    );
}

/// The whole token store disappears (the module then fails to list its
/// slots), then only this token's directory (the module runs, the token is
/// missing): each time the service reports the outage, changes nothing,
/// and recovers by itself when the files are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_token_fails_fast_changes_nothing_and_recovers() {
    let srv = TestServer::start("hsm-outage", POLICY, &["svc", "bob"], "").await;
    let s = srv.request("svc", "api:outage", 600).await;
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    let pem = srv.csr("outage");
    assert_eq!(srv.certificate("svc", &id, &pem).await.0, 201);

    let tokens = softhsm().dir().join("tokens");
    outage_and_recovery(&srv, &id, &pem, &tokens, 1).await;

    let token_dirs: Vec<_> = std::fs::read_dir(&tokens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(token_dirs.len(), 1, "{token_dirs:?}");
    outage_and_recovery(&srv, &id, &pem, &token_dirs[0], 2).await;

    // The trail records the outage as refused calls and verifies.
    let events = srv.events(&id).await;
    assert!(
        events.iter().filter(|e| *e == "refused").count() >= 16,
        "{events:?}"
    );
}
