//! Authorisation fails closed: when the store cannot say which tenant a
//! session belongs to, the audit listing and the event stream refuse
//! instead of answering as if the session had none. The failure is
//! injected behind a running server's back: one session row is corrupted in
//! the SQLite file, so loading that session fails with `store_corrupt`.

mod common;

use serde_json::Value;

use common::server::TestServer;
use common::sse::{self, EventStream};

const POLICY: &str = r#"
auditors = ["token:auditor"]

[[tenant]]
name = "acme"
members = ["token:acme-*"]
auditors = ["token:acme-audit"]

[[resource]]
match = "plc:*"
tenant = "acme"
requesters = ["token:acme-vendor"]
approvers = ["token:acme-lead"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]

[[gateway]]
identities = ["token:gw"]
resources = ["plc:*"]
tenant = "acme"
"#;

const CALLERS: &[&str] = &["auditor", "acme-vendor", "acme-lead", "acme-audit", "gw"];

struct Corrupted {
    db: std::path::PathBuf,
    id: String,
    body: String,
}

impl Corrupted {
    /// Makes session `id` unreadable in the store of `srv`.
    fn session(srv: &TestServer, id: &str) -> Self {
        let db = srv.dir.path().join("lockstep.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        let body: String = c
            .query_row("SELECT body FROM sessions WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        let n = c
            .execute("UPDATE sessions SET body = 'not json' WHERE id = ?1", [id])
            .unwrap();
        assert_eq!(n, 1);
        Self {
            db,
            id: id.to_owned(),
            body,
        }
    }

    /// Puts the row back as it was.
    fn repair(self) {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        c.execute(
            "UPDATE sessions SET body = ?2 WHERE id = ?1",
            [&self.id, &self.body],
        )
        .unwrap();
    }
}

/// Events until the stream's `stream_error` message; returns them and the error.
async fn until_error(stream: &mut EventStream) -> (Vec<Value>, Value) {
    let mut events = Vec::new();
    loop {
        let (id, event, data) = stream
            .message()
            .await
            .expect("an error message before the end");
        if event == "stream_error" {
            assert_eq!(
                id, None,
                "an error carries no id, so the client resumes from its last"
            );
            assert!(
                stream.message().await.is_none(),
                "the stream ends after its error"
            );
            return (events, data);
        }
        events.push(data);
    }
}

async fn audit(srv: &TestServer, who: &str) -> (u16, Value) {
    srv.call("GET", "/v1/audit?after=0&limit=1000", Some(who), None)
        .await
}

#[tokio::test]
async fn an_unreadable_session_is_refused_not_taken_for_one_without_tenant() {
    let srv = TestServer::start("fail-closed", POLICY, CALLERS, "").await;
    // A readable acme session first: tenant auditors see it, top-level
    // auditors do not.
    let seen = srv.request("acme-vendor", "plc:line1", 600).await;
    let seen = seen["id"].as_str().unwrap().to_owned();
    let (status, page) = audit(&srv, "acme-audit").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["session"] == seen)
    );
    let (status, page) = audit(&srv, "auditor").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        !page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["session"] == seen)
    );

    // A second one, whose row then cannot be read.
    let hidden = srv.request("acme-vendor", "plc:line2", 600).await;
    let hidden_id = hidden["id"].as_str().unwrap().to_owned();
    let broken = Corrupted::session(&srv, &hidden_id);

    for who in ["auditor", "acme-audit"] {
        let (status, body) = audit(&srv, who).await;
        assert_eq!(status, 503, "{who}: {body}");
        assert_eq!(body["error"], "store_corrupt", "{who}: {body}");
        assert!(body.get("entries").is_none());
    }
    for who in ["auditor", "acme-audit", "gw"] {
        let mut stream = sse::connect(&srv.http, &srv.url, srv.token(who), "?after=0", None).await;
        let (events, error) = until_error(&mut stream).await;
        assert_eq!(error["error"], "store_corrupt", "{who}: {error}");
        assert!(
            events.iter().all(|e| e["session"] != hidden_id.as_str()),
            "{who} got nothing of the unreadable session"
        );
        // Everything before it was delivered, without gap for this caller.
        if who == "acme-audit" {
            assert!(events.iter().any(|e| e["session"] == seen));
        }
    }

    // Live: a subscriber past the session's entries ends when a new entry
    // names it (a refused approval: the session cannot be loaded).
    let mut live = sse::connect(&srv.http, &srv.url, srv.token("auditor"), "", None).await;
    let (status, body) = srv.vote("acme-lead", &hidden, "approve").await;
    assert_eq!(status, 503, "{body}");
    let (events, error) = until_error(&mut live).await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(error["error"], "store_corrupt");

    // Repaired, the trail reads again, and a stream resumed after the last
    // event an auditor got goes on with the next one.
    broken.repair();
    let (status, page) = audit(&srv, "acme-audit").await;
    assert_eq!(status, 200, "{page}");
    let entries = page["entries"].as_array().unwrap();
    let of_hidden: Vec<&Value> = entries
        .iter()
        .filter(|e| e["session"] == hidden_id.as_str())
        .collect();
    assert_eq!(
        of_hidden.len(),
        2,
        "requested, and the refused approval: {of_hidden:?}"
    );
    let first = of_hidden[0]["seq"].as_u64().unwrap();
    let mut resumed = sse::connect(
        &srv.http,
        &srv.url,
        srv.token("acme-audit"),
        "",
        Some(first - 1),
    )
    .await;
    let next = resumed.event().await;
    assert_eq!(next["seq"].as_u64(), Some(first));
    assert_eq!(next["session"], hidden_id.as_str());
    assert_eq!(next["tenant"], "acme");
}
