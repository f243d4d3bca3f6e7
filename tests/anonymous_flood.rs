//! A flood of calls without a valid credential: every one is answered 401,
//! at most the configured burst and rate are recorded one by one, the rest
//! are counted in `refusals_counted` entries, so the trail grows by a
//! bounded amount yet accounts for every call; refusals of authenticated
//! callers are all recorded; a graceful stop records what is still counted;
//! the trail verifies.

mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lockstep::clock::Timestamp;
use lockstep::store::{SqliteStore, Store};
use serde_json::Value;

use common::server::TestServer;

const POLICY: &str = r#"
[[resource]]
match = "db:payroll"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "15m"
profiles = ["mtls-client"]
"#;

const PER_SEC: u64 = 2;
const BURST: u64 = 20;

/// What the trail says about refusals: anonymous ones recorded one by one,
/// the sum of the counted ones, and authenticated ones recorded.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    anonymous: u64,
    counted: u64,
    authenticated: u64,
    counted_entries: u64,
}

async fn tally(srv: &TestServer) -> Tally {
    let store = SqliteStore::open(&srv.dir.path().join("lockstep.db")).unwrap();
    let mut t = Tally::default();
    let mut after = 0;
    loop {
        let page = store.audit_entries(after, 1000, None).await.unwrap();
        let Some(last) = page.last() else {
            return t;
        };
        after = last.seq;
        for e in &page {
            let body: Value = serde_json::from_str(&e.body).unwrap();
            match e.kind.as_str() {
                "refused" if body["caller"].is_null() => t.anonymous += 1,
                "refused" => t.authenticated += 1,
                "refusals_counted" => {
                    let codes = body["codes"].as_object().unwrap();
                    let sum: u64 = codes.values().map(|n| n.as_u64().unwrap()).sum();
                    assert_eq!(body["count"].as_u64(), Some(sum), "{body}");
                    assert_eq!(codes.keys().collect::<Vec<_>>(), vec!["unauthenticated"]);
                    let since = Timestamp::parse_rfc3339(body["since"].as_str().unwrap()).unwrap();
                    assert!(since.unix() <= e.at, "{body}");
                    t.counted += sum;
                    t.counted_entries += 1;
                }
                _ => {}
            }
        }
    }
}

/// `n` calls without a valid credential, 16 at once, each answered 401.
async fn flood(srv: &TestServer, n: usize) {
    let statuses: Vec<u16> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let (path, caller) = match i % 4 {
                0 => ("/v1/sessions", None),
                1 => ("/v1/sessions/ses_aaaaaaaaaaaaaaaaaaaaaaaaaa", None),
                2 => (
                    "/v1/sessions?state=open",
                    Some("Bearer:lst_not-a-real-token"),
                ),
                _ => ("/v1/audit", Some("Bearer:eyJhbGciOiJub25lIn0.e30.")),
            };
            let method = if i % 8 == 0 { "POST" } else { "GET" };
            srv.call(method, path, caller, None).await.0
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(refused, n, "{statuses:?}");
}

/// Waits until the trail accounts for `anonymous` refusals without a
/// credential (recorded or counted).
async fn accounted(srv: &TestServer, anonymous: u64) -> Tally {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = tally(srv).await;
        if t.anonymous + t.counted == anonymous || Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_flood_is_counted_not_recorded_one_by_one() {
    let extra = format!(
        "[audit]\nanonymous_refusals_per_sec = {PER_SEC}\nanonymous_refusals_burst = {BURST}\n"
    );
    let mut srv = TestServer::start("flood", POLICY, &["alice", "bob"], &extra).await;
    let start = Instant::now();
    flood(&srv, 800).await;
    // Someone who is authenticated is recorded every time, flood or not.
    for _ in 0..30 {
        let (status, _) = srv
            .call(
                "GET",
                "/v1/sessions/ses_aaaaaaaaaaaaaaaaaaaaaaaaaa",
                Some("bob"),
                None,
            )
            .await;
        assert_eq!(status, 404);
    }
    let t = accounted(&srv, 800).await;
    let elapsed = start.elapsed().as_secs() + 1;
    eprintln!("after the flood: {t:?} in {elapsed}s");
    assert_eq!(t.anonymous + t.counted, 800, "{t:?}");
    assert!(
        t.anonymous <= BURST + PER_SEC * elapsed,
        "{t:?} in {elapsed}s"
    );
    assert!(t.anonymous >= BURST, "{t:?}");
    assert!(t.counted_entries >= 1, "{t:?}");
    assert_eq!(t.authenticated, 30, "{t:?}");

    // What is counted when the service stops is recorded before it stops.
    flood(&srv, 200).await;
    srv.stop().await;
    let t = tally(&srv).await;
    assert_eq!(t.anonymous + t.counted, 1000, "{t:?}");

    let (ok, out) = common::audit_verify(&srv.dir.path().join("lockstep.db"), &srv.root_pem());
    assert!(ok, "{out}");
}
