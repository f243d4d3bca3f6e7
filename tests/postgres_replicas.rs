//! Several `lockstep serve` processes on one PostgreSQL database keep
//! every rule: approvals reaching different processes open a session
//! once, mints through both never pass a session's count, a process
//! killed mid-run leaves the other serving, every acknowledged
//! credential is on the record, and the trail is one dense hash chain
//! that `lockstep audit verify` checks from the database.
#![cfg(feature = "postgres")]

mod common;

use std::io::BufRead;
use std::process::{Child, Command};
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
"#;

/// A `lockstep serve` child on the server's configuration; its stderr is
/// drained by a thread. Returns the child and its URL.
fn serve(srv: &TestServer) -> (Child, String) {
    let (child, stderr, url) =
        common::server::spawn_serve(env!("CARGO_BIN_EXE_lockstep"), &srv.config_path, "warn");
    std::thread::spawn(move || for _ in stderr.lines() {});
    (child, url)
}

async fn call(srv: &TestServer, url: &str, who: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = srv
        .http
        .post(format!("{url}{path}"))
        .bearer_auth(srv.token(who))
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_on_one_database_keep_every_rule() {
    let mut srv = TestServer::start_in(
        StoreKind::Postgres,
        "replicas",
        POLICY,
        &["alice", "bob", "carol"],
        "",
    )
    .await;
    srv.stop().await;
    let (mut a, url_a) = serve(&srv);
    let (mut b, url_b) = serve(&srv);
    let csr = srv.csr("replicas");
    let urls = [url_a.as_str(), url_b.as_str()];

    let mut issued = Vec::new();
    for i in 0..8 {
        let body = json!({"resource": format!("db:s{i}"), "task": "replicas", "duration_secs": 600, "profile": "mtls-client"});
        let (status, s) = call(&srv, urls[i % 2], "alice", "/v1/sessions", body).await;
        assert_eq!(status, 201, "{s}");
        let id = s["id"].as_str().unwrap().to_owned();
        // Approvals reaching the two processes at once open it once.
        let path = format!("/v1/sessions/{id}/approve");
        let vote = json!({"request_hash": s["request_hash"]});
        let (x, y) = tokio::join!(
            call(&srv, &url_a, "bob", &path, vote.clone()),
            call(&srv, &url_b, "carol", &path, vote.clone()),
        );
        assert_eq!((x.0, y.0), (200, 200), "{x:?} {y:?}");
        let kinds = srv.events(&id).await;
        assert_eq!(
            kinds.iter().filter(|k| *k == "opened").count(),
            1,
            "{kinds:?}"
        );
        // Six mints at once through both: exactly the session's two.
        let path = format!("/v1/sessions/{id}/certificate");
        let mints: Vec<_> = (0..6)
            .map(|k| {
                let (srv, path, csr) = (&srv, path.clone(), csr.clone());
                async move { call(srv, urls[k % 2], "alice", &path, json!({"csr": csr})).await }
            })
            .collect();
        let answers = futures_util::future::join_all(mints).await;
        let mut ok = 0;
        for (status, body) in answers {
            match status {
                201 => {
                    ok += 1;
                    issued.push(body["serial"].as_str().unwrap().to_owned());
                }
                409 => assert_eq!(body["error"], "credential_limit_reached", "{body}"),
                other => panic!("mint answered {other}: {body}"),
            }
        }
        assert_eq!(ok, 2, "session {id}");
    }

    // A killed process leaves the other serving.
    Command::new("kill")
        .args(["-KILL", &b.id().to_string()])
        .status()
        .unwrap();
    b.wait().unwrap();
    let body = json!({"resource": "db:after", "task": "replicas", "duration_secs": 600, "profile": "mtls-client"});
    let (status, s) = call(&srv, &url_a, "alice", "/v1/sessions", body).await;
    assert_eq!(status, 201, "{s}");

    // Every acknowledged certificate is on the record as issued, and the
    // trail is one dense chain.
    let config = lockstep::config::Config::load(&srv.config_path).unwrap();
    let store = lockstep::store::open(config.store.as_ref().unwrap())
        .await
        .unwrap();
    for serial in &issued {
        let c = store.credential(serial).await.unwrap().expect("on record");
        assert_eq!(c.state, "issued", "{serial}");
    }
    let entries = store.audit_entries(0, 10_000, None).await.unwrap();
    assert!(!entries.is_empty());
    let mut prev = lockstep::audit::GENESIS;
    for (n, e) in (1u64..).zip(&entries) {
        assert_eq!(e.seq, n, "dense from 1");
        assert_eq!(e.prev_hash, hex::encode(prev), "entry {n}");
        prev =
            lockstep::audit::entry_hash(&prev, e.seq, e.at, e.session.as_deref(), &e.kind, &e.body);
        assert_eq!(e.hash, hex::encode(prev), "entry {n}");
    }
    a.kill().unwrap();
    a.wait().unwrap();

    // `lockstep audit verify` reads the trail from the database the
    // configuration names, and names an entry edited behind its back.
    let verify = || {
        let out = common::lockstep_cli(&[
            "--config",
            srv.config_path.to_str().unwrap(),
            "audit",
            "verify",
        ]);
        (out.status.success(), common::output_text(&out))
    };
    let (ok, text) = verify();
    assert!(ok && text.contains("audit trail OK"), "{text}");
    let Some(lockstep::config::StoreConfig::Postgres(pg)) = config.store.clone() else {
        panic!("a PostgreSQL store");
    };
    let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("UPDATE events SET body = body || ' ' WHERE seq = 3")
        .await
        .unwrap();
    let (ok, text) = verify();
    assert!(!ok && text.contains("entry 3"), "{text}");
}
