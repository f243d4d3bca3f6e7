//! The audit trail is tamper-evident: every kind of tampering with the
//! SQLite file is found and named by `lockstep audit verify`, an untouched
//! trail verifies, and a `kill -9` under load loses no acknowledged
//! issuance.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};
use serde_json::{Value, json};

use common::backend::Backend;
use common::server::TestServer;
use common::{audit_verify as verify, lockstep_cli as lockstep, openssl_csr, output_text as text};

const POLICY: &str = r#"
auditors = ["token:auditor"]

[[resource]]
match = "db:*"
requesters = ["token:alice"]
approvers = ["token:bob", "token:carol"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
"#;

const AUDIT: &str = "[audit]\ncheckpoint_every = 4\ncheckpoint_interval = \"1s\"\n";

async fn start(name: &str) -> TestServer {
    start_on(Backend::SoftHsm, name).await
}

async fn start_on(backend: Backend, name: &str) -> TestServer {
    TestServer::start_on(
        backend,
        name,
        POLICY,
        &["alice", "bob", "carol", "auditor", "mallory"],
        AUDIT,
    )
    .await
}

/// One full session with a certificate; returns the serial.
async fn session_with_certificate(srv: &TestServer, csr: &str) -> Option<String> {
    let (status, s) = srv
        .call("POST", "/v1/sessions", Some("alice"),
            Some(json!({"resource": "db:payroll", "task": "audit test", "duration_secs": 600, "profile": "mtls-client"})))
        .await;
    if status != 201 {
        return None;
    }
    let id = s["id"].as_str()?;
    srv.call(
        "POST",
        &format!("/v1/sessions/{id}/approve"),
        Some("bob"),
        Some(json!({"request_hash": s["request_hash"]})),
    )
    .await;
    let (status, cert) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/certificate"),
            Some("alice"),
            Some(json!({"csr": csr})),
        )
        .await;
    (status == 201).then(|| cert["serial"].as_str().unwrap().to_owned())
}

/// A trail with some history, the service stopped (last checkpoint signed).
async fn history(name: &str) -> (TestServer, PathBuf) {
    history_on(Backend::SoftHsm, name).await
}

async fn history_on(backend: Backend, name: &str) -> (TestServer, PathBuf) {
    let mut srv = start_on(backend, name).await;
    let (_, pem) = openssl_csr(srv.dir.path(), "audit", "ec:P-256");
    let pem = String::from_utf8(pem).unwrap();
    for _ in 0..6 {
        session_with_certificate(&srv, &pem).await.unwrap();
        // Let the background checkpointer (every 4 entries) catch up.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A refused call is on the record too.
    srv.call("POST", "/v1/sessions", Some("mallory"),
        Some(json!({"resource": "db:payroll", "task": "x", "duration_secs": 60, "profile": "mtls-client"}))).await;
    srv.stop().await;
    let db = srv.dir.path().join("lockstep.db");
    (srv, db)
}

fn copy(db: &Path, name: &str) -> PathBuf {
    let to = db.with_file_name(format!("{name}.db"));
    // Fold the WAL into the copy so edits go to one file.
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(&format!("VACUUM INTO '{}'", to.display()))
        .unwrap();
    to
}

fn last_checkpoint_upto(db: &Path) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row("SELECT MAX(upto) FROM checkpoints", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_tampering_is_found_and_named() {
    let (srv, db) = history("audit-tamper").await;
    let root = srv.root_pem();
    let (ok, out) = verify(&db, &root);
    assert!(ok, "an untouched trail verifies: {out}");
    assert!(out.contains("audit trail OK"), "{out}");
    let upto = last_checkpoint_upto(&db);
    assert!(upto >= 20, "checkpoints cover the history (upto {upto})");
    let checkpoints: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get(0))
        .unwrap();
    assert!(
        checkpoints >= 4,
        "checkpoints every few entries ({checkpoints})"
    );

    type Tamper = fn(&Connection, i64);
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "edit a field",
            |c, _| {
                c.execute("UPDATE events SET body = replace(body, 'token:bob', 'token:eve') WHERE seq = 3", []).unwrap();
            },
            "entry 3: content does not match its hash",
        ),
        (
            "edit and rewrite every later hash",
            |c, _| {
                c.execute("UPDATE events SET body = replace(body, 'token:bob', 'token:eve') WHERE seq = 3", []).unwrap();
                rehash_from(c, 3);
            },
            "entries up to it were rewritten",
        ),
        (
            "delete a row",
            |c, _| {
                c.execute("DELETE FROM events WHERE seq = 5", []).unwrap();
            },
            "entry 5: missing",
        ),
        (
            "insert a row",
            |c, _| {
                c.execute("UPDATE events SET seq = -seq WHERE seq > 6", [])
                    .unwrap();
                c.execute("UPDATE events SET seq = -seq + 1 WHERE seq < 0", [])
                    .unwrap();
                let prev: Vec<u8> = c
                    .query_row("SELECT hash FROM events WHERE seq = 6", [], |r| r.get(0))
                    .unwrap();
                let body = r#"{"event":"approved","by":"token:mallory"}"#;
                let prev32: [u8; 32] = prev.clone().try_into().unwrap();
                let hash =
                    lockstep::audit::entry_hash(&prev32, 7, 1_900_000_000, None, "approved", body);
                c.execute("INSERT INTO events (seq, at, session_id, kind, body, prev_hash, hash) VALUES (7, 1900000000, NULL, 'approved', ?1, ?2, ?3)",
                params![body, prev, hash.to_vec()]).unwrap();
            },
            "entry 8: does not link to the entry before it",
        ),
        (
            "swap two rows",
            |c, _| {
                c.execute_batch(
                    "
                UPDATE events SET seq = -1 WHERE seq = 8;
                UPDATE events SET seq = 8 WHERE seq = 9;
                UPDATE events SET seq = 9 WHERE seq = -1;",
                )
                .unwrap();
            },
            "entry 8: does not link to the entry before it",
        ),
        (
            "truncate the tail past the last checkpoint",
            |c, upto| {
                c.execute("DELETE FROM events WHERE seq > ?1", params![upto - 3])
                    .unwrap();
            },
            "the trail was truncated",
        ),
        (
            "replace a checkpoint signature",
            |c, _| {
                let other: Vec<u8> = c
                    .query_row(
                        "SELECT signature FROM checkpoints WHERE number = 2",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                c.execute(
                    "UPDATE checkpoints SET signature = ?1 WHERE number = 1",
                    params![other],
                )
                .unwrap();
            },
            "checkpoint 1: signature does not verify",
        ),
        (
            "move a checkpoint",
            |c, _| {
                c.execute(
                    "UPDATE checkpoints SET upto = upto - 1 WHERE number = 1",
                    [],
                )
                .unwrap();
            },
            "checkpoint 1: signature does not verify",
        ),
        (
            "delete a checkpoint in the middle",
            |c, _| {
                c.execute("DELETE FROM checkpoints WHERE number = 2", [])
                    .unwrap();
            },
            "checkpoint 3: checkpoint 2 is missing",
        ),
    ];
    for (name, tamper, expected) in cases {
        let path = copy(&db, &name.replace(' ', "-"));
        let c = Connection::open(&path).unwrap();
        tamper(&c, upto);
        drop(c);
        let (ok, out) = verify(&path, &root);
        assert!(!ok, "{name}: verify should fail\n{out}");
        assert!(
            out.contains(expected),
            "{name}: expected `{expected}` in\n{out}"
        );
        assert!(
            out.contains("error[audit_verification_failed]"),
            "{name}: {out}"
        );
    }

    // A checkpoint signed by a key lockstep never certified is refused.
    let path = copy(&db, "forged-signer");
    let c = Connection::open(&path).unwrap();
    c.execute(
        "UPDATE checkpoints SET signer = zeroblob(32) WHERE number = 1",
        [],
    )
    .unwrap();
    drop(c);
    let (ok, out) = verify(&path, &root);
    assert!(
        !ok && out.contains("not a certified lockstep audit signer"),
        "{out}"
    );

    // Another CA's root does not vouch for lockstep's signer.
    let other = tokio::task::spawn_blocking(|| common::test_ca("audit-other-root"))
        .await
        .unwrap();
    let (ok, out) = verify(&db, &other.root_pem());
    assert!(
        !ok && out.contains("does not chain to the given root"),
        "{out}"
    );
}

/// Recomputes the hash chain from `seq` on, as an attacker who knows the
/// (public) hashing scheme would.
fn rehash_from(c: &Connection, seq: i64) {
    let mut prev: [u8; 32] = c
        .query_row(
            "SELECT hash FROM events WHERE seq = ?1",
            params![seq - 1],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .unwrap()
        .try_into()
        .unwrap();
    let rows: Vec<(i64, i64, Option<String>, String, String)> = c
        .prepare("SELECT seq, at, session_id, kind, body FROM events WHERE seq >= ?1 ORDER BY seq")
        .unwrap()
        .query_map(params![seq], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (s, at, session, kind, body) in rows {
        let hash =
            lockstep::audit::entry_hash(&prev, s as u64, at, session.as_deref(), &kind, &body);
        c.execute(
            "UPDATE events SET prev_hash = ?2, hash = ?3 WHERE seq = ?1",
            params![s, prev.to_vec(), hash.to_vec()],
        )
        .unwrap();
        prev = hash;
    }
}

on_both_backends!(async export_verifies_offline_and_answers_who_approved_a_certificate);
async fn export_verifies_offline_and_answers_who_approved_a_certificate(backend: Backend) {
    let (srv, db) = history_on(backend, "audit-export").await;
    let dir = srv.dir.path();
    let cfg = srv.config_path.to_str().unwrap();
    let out = lockstep(&["--config", cfg, "audit", "export"]);
    assert!(out.status.success(), "{}", text(&out));
    let export = dir.join("trail.jsonl");
    std::fs::write(&export, &out.stdout).unwrap();
    let out = lockstep(&[
        "audit",
        "verify",
        "--export",
        export.to_str().unwrap(),
        "--root",
        srv.root_pem().to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problems"], json!([]));

    // The auditor's question: who approved certificate X, when, for how long?
    let lines: Vec<Value> = String::from_utf8(std::fs::read(&export).unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let minted = lines
        .iter()
        .find(|l| l["entry"]["kind"] == "minted")
        .unwrap();
    let session = minted["entry"]["session"].as_str().unwrap();
    let out = lockstep(&["--config", cfg, "audit", "export", "--session", session]);
    let story: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|l| l.get("entry").cloned())
        .collect();
    let kinds: Vec<&str> = story.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["requested", "approved", "opened", "minted"],
        "{story:?}"
    );
    let opened: Value = serde_json::from_str(story[2]["body"].as_str().unwrap()).unwrap();
    assert_eq!(opened["approvers"], json!(["token:bob"]));
    let _ = db;

    // Auditors read it over the API; others may not.
    let srv = srv.restart().await;
    let (status, page) = srv
        .call(
            "GET",
            &format!("/v1/audit?session={session}"),
            Some("auditor"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["entries"].as_array().unwrap().len(), 4);
    let (status, page) = srv
        .call("GET", "/v1/audit?limit=5", Some("auditor"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["entries"].as_array().unwrap().len(), 5);
    assert!(page["next_after"].as_u64().is_some());
    let (status, body) = srv.call("GET", "/v1/audit", Some("alice"), None).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_issuance() {
    let mut srv = start("audit-kill").await;
    srv.stop().await;
    let (mut child, _stderr) = srv.serve_process("warn");
    let srv = Arc::new(srv);
    let (_, pem) = openssl_csr(srv.dir.path(), "kill", "ec:P-256");
    let pem = String::from_utf8(pem).unwrap();
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (srv, pem, ack, stop) =
                (srv.clone(), pem.clone(), acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let attempt = tokio::time::timeout(
                        Duration::from_secs(5),
                        session_with_certificate(&srv, &pem),
                    )
                    .await;
                    match attempt {
                        Ok(Some(serial)) => ack.lock().unwrap().push(serial),
                        _ => break,
                    }
                }
            })
        })
        .collect();
    // Let it run under load, then kill -9 in the middle of it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 3,
        "load ran: {} issuances acknowledged",
        acknowledged.len()
    );

    // The trail verifies (entries after the last checkpoint are chained,
    // just not signed yet) and holds every acknowledged issuance.
    let db = srv.dir.path().join("lockstep.db");
    let (ok, out) = verify(&db, &srv.root_pem());
    assert!(ok, "{out}");
    let conn = Connection::open(&db).unwrap();
    for serial in &acknowledged {
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM events e JOIN credentials c ON c.serial = ?1
                 WHERE e.kind = 'minted' AND e.body LIKE '%' || ?1 || '%' AND c.state = 'issued'",
                params![serial],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            n, 1,
            "acknowledged serial {serial} is on the record and in the store"
        );
    }
    // No credential without its audit entry.
    let orphans: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM credentials c WHERE c.state = 'issued' AND NOT EXISTS
             (SELECT 1 FROM events e WHERE e.kind = 'minted' AND e.body LIKE '%' || c.serial || '%')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
    drop(conn);

    // Restarted, lockstep recovers (voids reservations cut short) and the
    // trail still verifies, now with its tail signed at shutdown.
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let mut srv = srv.restart().await;
    srv.stop().await;
    let (ok, out) = verify(&db, &srv.root_pem());
    assert!(ok && !out.contains("not yet signed"), "{out}");
    let stuck: i64 = Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM credentials WHERE state = 'reserved'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stuck, 0, "no credential stuck between states");
}
