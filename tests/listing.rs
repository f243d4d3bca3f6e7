//! Listing sessions among many: a caller who may see a few old sessions
//! under thousands of newer ones still finds them, page by page; pages
//! neither skip nor repeat a session; a cursor never names a session the
//! caller may not see; `lockstep status` follows the pages.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;

use futures_util::StreamExt;
use lockstep::clock::{Clock, ManualClock, SystemClock};
use lockstep::service::LIST_SCAN_BUDGET;
use serde_json::{Value, json};

use common::server::TestServer;

const POLICY: &str = r#"
[[resource]]
match = "db:quiet"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
pending_timeout = "1h"
profiles = ["mtls-client"]

[[resource]]
match = "ci:*"
requesters = ["token:svc"]
approvers = ["token:carol"]
quorum = 1
max_duration = "1h"
pending_timeout = "1h"
profiles = ["mtls-client"]
"#;

/// Newer sessions than alice's: more than one call examines.
const BUSY: usize = LIST_SCAN_BUDGET + 300;

/// `GET /v1/sessions` with `query` as `who`: the ids and `next_before`.
async fn page(srv: &TestServer, who: &str, query: &str) -> (Vec<String>, Option<String>) {
    let (status, body) = srv
        .call("GET", &format!("/v1/sessions?{query}"), Some(who), None)
        .await;
    assert_eq!(status, 200, "{body}");
    (
        ids_of(&body),
        body["next_before"].as_str().map(str::to_owned),
    )
}

/// Every page of `query` as `who`, following `next_before`: the ids in
/// order and the cursors handed out.
async fn all_pages(srv: &TestServer, who: &str, query: &str) -> (Vec<String>, Vec<String>) {
    let (mut ids, mut cursors) = (Vec::new(), Vec::new());
    let mut next = page(srv, who, query).await;
    loop {
        ids.extend(next.0);
        let Some(cursor) = next.1 else {
            return (ids, cursors);
        };
        assert!(cursors.len() < 100, "listing does not end");
        cursors.push(cursor.clone());
        next = page(srv, who, &format!("{query}&before={cursor}")).await;
    }
}

/// `lockstep status --json` with `args` as `who`.
async fn status(srv: &TestServer, who: &str, args: &[&str]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockstep"));
    command
        .arg("status")
        .args(args)
        .arg("--json")
        .env("LOCKSTEP_URL", &srv.url)
        .env("LOCKSTEP_CA", srv.root_pem())
        .env("LOCKSTEP_TOKEN", srv.token(who))
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The session ids of a listing, in order.
fn ids_of(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_old_sessions_are_found_under_thousands_of_newer_ones() {
    let now = SystemClock.now();
    let clock = Arc::new(ManualClock::new(now));
    let srv = TestServer::start_with_clock(
        "listing",
        POLICY,
        &["alice", "bob", "carol", "svc", "dave"],
        clock.clone(),
    )
    .await;
    let quiet = srv.request("alice", "db:quiet", 600).await;
    let quiet_id = quiet["id"].as_str().unwrap().to_owned();

    // Thousands of newer sessions by another requester, a hundred in each
    // second (ties are ordered by id).
    let mut busy = HashSet::new();
    for second in 0..BUSY.div_ceil(100) {
        clock.set(now.plus_secs(1 + second as i64));
        let created: Vec<(u16, Value)> =
            futures_util::stream::iter(0..100.min(BUSY - second * 100))
                .map(|i| {
                    let body = json!({"resource": format!("ci:job-{second}-{i}"), "task": "build",
                    "duration_secs": 600, "profile": "mtls-client"});
                    srv.call("POST", "/v1/sessions", Some("svc"), Some(body))
                })
                .buffer_unordered(16)
                .collect()
                .await;
        for (status, body) in created {
            assert_eq!(status, 201, "{body}");
            busy.insert(body["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(busy.len(), BUSY);

    // Alice's session is older than everything one call examines: the
    // first page is empty with a cursor that names no session (a time
    // alone), and the next page has it.
    let (first, cursor) = page(&srv, "alice", "").await;
    assert!(first.is_empty(), "{first:?}");
    let cursor = cursor.expect("a cursor after the scan budget");
    assert!(cursor.bytes().all(|b| b.is_ascii_digit()), "{cursor}");
    let (ids, cursors) = all_pages(&srv, "alice", "").await;
    assert_eq!(ids, vec![quiet_id.clone()]);
    assert_eq!(cursors, vec![cursor]);
    // Bob approves it and finds it the same way, by state too.
    let (ids, _) = all_pages(&srv, "bob", "state=pending").await;
    assert_eq!(ids, vec![quiet_id.clone()]);
    // Someone who may see nothing pages through to the end and gets nothing.
    let (ids, cursors) = all_pages(&srv, "dave", "").await;
    assert!(ids.is_empty(), "{ids:?}");
    assert!(!cursors.is_empty() && cursors.iter().all(|c| !c.contains('.')));

    // The busy requester's pages: newest first, every session once, none
    // of alice's; a full page's cursor is its last session.
    let (first, cursor) = page(&srv, "svc", "limit=1000").await;
    assert_eq!(first.len(), 1000);
    let cursor = cursor.unwrap();
    assert!(cursor.ends_with(&format!(".{}", first[999])), "{cursor}");
    let (ids, _) = all_pages(&srv, "svc", "limit=1000").await;
    assert_eq!(ids.len(), BUSY);
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), busy);
    assert_eq!(&ids[..1000], &first[..]);
    let (ids_small_pages, _) = all_pages(&srv, "carol", "limit=777").await;
    assert_eq!(ids_small_pages, ids, "page size changes nothing");

    // `lockstep status` follows the pages up to its limit.
    let list = status(&srv, "alice", &[]).await;
    assert_eq!(ids_of(&list), vec![quiet_id]);
    assert!(list.get("next_before").is_none(), "{list}");
    let list = status(&srv, "carol", &["--state", "pending", "--limit", "1500"]).await;
    assert_eq!(ids_of(&list), ids[..1500].to_vec());
    assert!(list["next_before"].is_string(), "more remain");

    // A cursor that is not one is refused.
    for bad in ["x", "1.ses_x", "-5", "99999999999999999999", "", "1."] {
        let (status, body) = srv
            .call(
                "GET",
                &format!("/v1/sessions?before={bad}"),
                Some("alice"),
                None,
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{bad}: {body}"
        );
    }
}
