//! Minting on the edges of a session's life. The service reads "now" from
//! one clock; here it is a [`ManualClock`] put one second before
//! `closes_at` and then on it while mints are in flight, and a close
//! arrives while mints are in flight. A credential is either minted before
//! the end (notAfter == closes_at, revoked if the session closed early) or
//! refused; never minted after.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lockstep::clock::{Clock, ManualClock, SystemClock, Timestamp};
use rusqlite::Connection;
use serde_json::Value;

use common::backend::Backend;
use common::server::TestServer;
use common::{crl_text, openssl, write};

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

/// An open session of `svc`, and its `closes_at`.
async fn open_session(srv: &TestServer, resource: &str, secs: u32) -> (String, Timestamp) {
    let s = srv.request("svc", resource, secs).await;
    let (status, body) = srv.vote("bob", &s, "approve").await;
    assert_eq!(status, 200, "{body}");
    let closes_at = Timestamp::parse_rfc3339(body["closes_at"].as_str().unwrap()).unwrap();
    (s["id"].as_str().unwrap().to_owned(), closes_at)
}

/// Mints from `clients` tasks until each is refused; returns every answer.
async fn mint_until_refused(srv: &Arc<TestServer>, id: &str, clients: usize) -> Vec<(u16, Value)> {
    let pem = srv.csr("edge");
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (srv, id, pem) = (srv.clone(), id.to_owned(), pem.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let (status, body) = srv.certificate("svc", &id, &pem).await;
                    let done = status != 201;
                    answers.push((status, body));
                    if done || answers.len() > 5000 {
                        return answers;
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The states and issue times of the session's credentials in the store.
fn credentials(srv: &TestServer, id: &str) -> Vec<(String, String, Option<i64>)> {
    let conn = Connection::open(srv.dir.path().join("lockstep.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT serial, state, issued_at FROM credentials WHERE session_id = ?1")
        .unwrap();
    stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Serials on the service's current CRL, lower-case hex.
async fn crl_serials(srv: &TestServer) -> Vec<String> {
    let der = srv
        .http
        .get(format!("{}/v1/crl", srv.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let path = write(srv.dir.path(), "edge.crl", &der);
    let (ok, text) = crl_text(&path);
    assert!(ok, "{text}");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(|s| s.trim().to_lowercase())
        .collect()
}

/// Certificate serials as lockstep prints them and as openssl does (no
/// leading zero octets).
fn canonical(serial: &str) -> String {
    serial.to_lowercase().trim_start_matches("00").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mints_racing_closes_at_end_exactly_there_and_never_after() {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let srv =
        TestServer::start_with_clock("edge-closes-at", POLICY, &["svc", "bob"], clock.clone())
            .await;
    let (id, closes_at) = open_session(&srv, "api:edge", 60).await;

    // One second before the end: minted, valid up to closes_at exactly.
    clock.set(closes_at.plus_secs(-1));
    let pem = srv.csr("last-second");
    let (status, body) = srv.certificate("svc", &id, &pem).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        Timestamp::parse_rfc3339(body["not_after"].as_str().unwrap()).unwrap(),
        closes_at
    );
    let leaf = write(
        srv.dir.path(),
        "last.pem",
        body["certificate"].as_str().unwrap().as_bytes(),
    );
    let (_, end) = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-enddate"]);
    let at = time::OffsetDateTime::from_unix_timestamp(closes_at.unix()).unwrap();
    let fmt = time::macros::format_description!(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
    );
    assert_eq!(end.trim(), format!("notAfter={}", at.format(&fmt).unwrap()));

    // Mints in flight while the clock reaches closes_at.
    let srv = Arc::new(srv);
    let flip = {
        let (srv, clock, id) = (srv.clone(), clock.clone(), id.clone());
        tokio::spawn(async move {
            // Let some mints through first.
            while srv.session("svc", &id).await["credentials_minted"]
                .as_u64()
                .unwrap()
                < 20
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            clock.set(closes_at);
        })
    };
    let answers = mint_until_refused(&srv, &id, 8).await;
    flip.await.unwrap();
    let mut issued = 0;
    for (status, body) in &answers {
        match status {
            201 => {
                issued += 1;
                assert_eq!(
                    Timestamp::parse_rfc3339(body["not_after"].as_str().unwrap()).unwrap(),
                    closes_at
                );
            }
            409 => assert!(
                ["session_closed", "session_not_open"].contains(&body["error"].as_str().unwrap()),
                "{body}"
            ),
            _ => panic!("{status}: {body}"),
        }
    }
    // The clock moved once 20 slots were taken; up to 8 of them (one per
    // client) may have been in flight and withheld.
    assert!(issued >= 12, "{issued} issued before the end");

    // The store agrees: every issued credential was issued before
    // closes_at; mints that finished on it were withheld, not issued.
    let creds = credentials(&srv, &id);
    let on_record: Vec<_> = creds.iter().filter(|c| c.1 == "issued").collect();
    assert_eq!(
        on_record.len(),
        issued + 1,
        "acknowledged == issued on record"
    );
    for (serial, _, at) in &on_record {
        assert!(at.unwrap() < closes_at.unix(), "{serial} issued at {at:?}");
    }
    assert!(creds.iter().all(|c| c.1 != "reserved"), "{creds:?}");
    let view = srv.session("svc", &id).await;
    assert_eq!(
        (view["state"].as_str(), view["close_reason"].as_str()),
        (Some("closed"), Some("expired")),
        "{view}"
    );
    assert_eq!(view["closed_at"], view["closes_at"], "{view}");
    // The session's count includes the credentials signed but withheld
    // because the session ended before they could be handed out.
    let signed = creds
        .iter()
        .filter(|c| c.1 == "issued" || c.1 == "withheld")
        .count();
    assert_eq!(view["credentials_minted"].as_u64(), Some(signed as u64));
    let (status, body) = srv.certificate("svc", &id, &pem).await;
    assert_eq!(status, 409, "{body}");
}

on_both_backends!(async mints_racing_a_close_are_all_revoked_or_refused);
async fn mints_racing_a_close_are_all_revoked_or_refused(backend: Backend) {
    let srv = TestServer::start_on(backend, "edge-close", POLICY, &["svc", "bob"], "").await;
    let (id, _) = open_session(&srv, "api:close", 600).await;
    let srv = Arc::new(srv);
    let closed = Arc::new(AtomicBool::new(false));
    let closer = {
        let (srv, id, closed) = (srv.clone(), id.clone(), closed.clone());
        tokio::spawn(async move {
            while srv.session("svc", &id).await["credentials_minted"]
                .as_u64()
                .unwrap()
                < 10
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let (status, body) = srv
                .call(
                    "POST",
                    &format!("/v1/sessions/{id}/close"),
                    Some("svc"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            closed.store(true, Ordering::SeqCst);
        })
    };
    let answers = mint_until_refused(&srv, &id, 6).await;
    closer.await.unwrap();
    assert!(closed.load(Ordering::SeqCst));

    let acknowledged: Vec<String> = answers
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| canonical(body["serial"].as_str().unwrap()))
        .collect();
    for (status, body) in &answers {
        assert!(
            *status == 201 || (*status == 409 && body["error"] == "session_closed"),
            "{status}: {body}"
        );
    }
    assert!(!acknowledged.is_empty(), "no mint before the close");

    // Every certificate the clients saw is on the CRL; the store holds
    // no issued credential beyond them.
    let revoked = crl_serials(&srv).await;
    let revoked: Vec<String> = revoked.iter().map(|s| canonical(s)).collect();
    for serial in &acknowledged {
        assert!(revoked.contains(serial), "{serial} not revoked");
    }
    let creds = credentials(&srv, &id);
    let issued = creds.iter().filter(|c| c.1 == "issued").count();
    assert_eq!(issued, acknowledged.len(), "{creds:?}");
    assert!(creds.iter().all(|c| c.1 != "reserved"), "{creds:?}");
}
