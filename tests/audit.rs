//! The audit trail is tamper-evident: every kind of tampering with the
//! store (a SQLite file, a PostgreSQL database) is found and named by
//! `lockstep audit verify`, an untouched
//! trail verifies, and a `kill -9` under load loses no acknowledged
//! issuance.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};
use serde_json::{Value, json};

use common::backend::Backend;
use common::server::TestServer;
use common::store::{Place, StoreKind, TestStore};
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

/// A trail with some history at `place`, the service stopped (last
/// checkpoint signed).
async fn history_at(place: Place, name: &str) -> TestServer {
    let srv = TestServer::start_at(
        place,
        name,
        POLICY,
        &["alice", "bob", "carol", "auditor", "mallory"],
        AUDIT,
    )
    .await;
    with_history(srv).await
}

async fn with_history(mut srv: TestServer) -> TestServer {
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
    srv
}

/// The kinds of tampering, each with what `audit verify` must name.
const TAMPERING: &[(&str, &str)] = &[
    ("edit a field", "entry 3: content does not match its hash"),
    (
        "edit and rewrite every later hash",
        "entries up to it were rewritten",
    ),
    ("delete a row", "entry 5: missing"),
    (
        "insert a row",
        "entry 8: does not link to the entry before it",
    ),
    (
        "swap two rows",
        "entry 8: does not link to the entry before it",
    ),
    (
        "truncate the tail past the last checkpoint",
        "the trail was truncated",
    ),
    (
        "replace a checkpoint signature",
        "checkpoint 1: signature does not verify",
    ),
    (
        "move a checkpoint",
        "checkpoint 1: signature does not verify",
    ),
    (
        "delete a checkpoint in the middle",
        "checkpoint 3: checkpoint 2 is missing",
    ),
    (
        "sign with a key never certified",
        "not a certified lockstep audit signer",
    ),
];

/// Tampers with `db` as an attacker with write access to the store would
/// (on PostgreSQL also dropping the uniqueness guard that stands in the way).
async fn tamper(db: &TestStore, name: &str, upto: i64) {
    let edit = "UPDATE events SET body = replace(body, 'token:bob', 'token:eve') WHERE seq = 3";
    match name {
        "edit a field" => db.exec(edit).await,
        "edit and rewrite every later hash" => {
            db.exec(edit).await;
            rehash_from(db, 3).await;
        }
        "delete a row" => db.exec("DELETE FROM events WHERE seq = 5").await,
        "insert a row" => {
            if db.kind() != StoreKind::Sqlite {
                db.exec("ALTER TABLE events DROP CONSTRAINT events_prev_hash_key")
                    .await;
            }
            db.exec("UPDATE events SET seq = -seq WHERE seq > 6").await;
            db.exec("UPDATE events SET seq = -seq + 1 WHERE seq < 0")
                .await;
            let prev: [u8; 32] = db
                .bytes("SELECT hash FROM events WHERE seq = 6")
                .await
                .try_into()
                .unwrap();
            let body = r#"{"event":"approved","by":"token:mallory"}"#;
            let hash = lockstep::audit::entry_hash(&prev, 7, 1_900_000_000, None, "approved", body);
            db.exec(&format!(
                "INSERT INTO events (seq, at, session_id, kind, body, prev_hash, hash) \
                 VALUES (7, 1900000000, NULL, 'approved', '{body}', {}, {})",
                db.blob(&prev),
                db.blob(&hash)
            ))
            .await;
        }
        "swap two rows" => {
            db.exec(
                "UPDATE events SET seq = -1 WHERE seq = 8;
                 UPDATE events SET seq = 8 WHERE seq = 9;
                 UPDATE events SET seq = 9 WHERE seq = -1;",
            )
            .await
        }
        "truncate the tail past the last checkpoint" => {
            db.exec(&format!("DELETE FROM events WHERE seq > {}", upto - 3))
                .await
        }
        "replace a checkpoint signature" => {
            let other = db
                .bytes("SELECT signature FROM checkpoints WHERE number = 2")
                .await;
            db.exec(&format!(
                "UPDATE checkpoints SET signature = {} WHERE number = 1",
                db.blob(&other)
            ))
            .await
        }
        "move a checkpoint" => {
            db.exec("UPDATE checkpoints SET upto = upto - 1 WHERE number = 1")
                .await
        }
        "delete a checkpoint in the middle" => {
            db.exec("DELETE FROM checkpoints WHERE number = 2").await
        }
        "sign with a key never certified" => {
            db.exec(&format!(
                "UPDATE checkpoints SET signer = {} WHERE number = 1",
                db.blob(&[0; 32])
            ))
            .await
        }
        other => panic!("no tampering called {other}"),
    }
}

fn verify_db(db: &TestStore, root: &Path) -> (bool, String) {
    let out = lockstep(&[
        "audit",
        "verify",
        "--db",
        &db.db_arg(),
        "--root",
        root.to_str().unwrap(),
    ]);
    (out.status.success(), text(&out))
}

on_both_stores!(multi every_kind_of_tampering_is_found_and_named);
async fn every_kind_of_tampering_is_found_and_named(kind: StoreKind) {
    let place = Place {
        backend: Backend::SoftHsm,
        store: kind,
    };
    let srv = history_at(place, "audit-tamper").await;
    let store = srv.store();
    let root = srv.root_pem();
    let (ok, out) = verify_db(store, &root);
    assert!(ok, "an untouched trail verifies: {out}");
    assert!(out.contains("audit trail OK"), "{out}");
    let upto = store.count("SELECT MAX(upto) FROM checkpoints").await;
    assert!(upto >= 20, "checkpoints cover the history (upto {upto})");
    let checkpoints = store.count("SELECT COUNT(*) FROM checkpoints").await;
    assert!(
        checkpoints >= 4,
        "checkpoints every few entries ({checkpoints})"
    );
    for (name, expected) in TAMPERING {
        let copy = store.copy().await;
        tamper(&copy, name, upto).await;
        let (ok, out) = verify_db(&copy, &root);
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

    // Another CA's root does not vouch for lockstep's signer.
    let name = format!("audit-other-root-{}", kind.name());
    let other = tokio::task::spawn_blocking(move || common::test_ca(&name))
        .await
        .unwrap();
    let (ok, out) = verify_db(store, &other.root_pem());
    assert!(
        !ok && out.contains("does not chain to the given root"),
        "{out}"
    );
}

/// Recomputes the hash chain from `seq` on, as an attacker who knows the
/// (public) hashing scheme would.
async fn rehash_from(db: &TestStore, seq: i64) {
    let mut prev: [u8; 32] = db
        .bytes(&format!("SELECT hash FROM events WHERE seq = {}", seq - 1))
        .await
        .try_into()
        .unwrap();
    for (s, at, session, kind, body) in db.entries_from(seq).await {
        let hash =
            lockstep::audit::entry_hash(&prev, s as u64, at, session.as_deref(), &kind, &body);
        db.exec(&format!(
            "UPDATE events SET prev_hash = {}, hash = {} WHERE seq = {s}",
            db.blob(&prev),
            db.blob(&hash)
        ))
        .await;
        prev = hash;
    }
}

on_every_place!(async export_verifies_offline_and_answers_who_approved_a_certificate);
async fn export_verifies_offline_and_answers_who_approved_a_certificate(place: Place) {
    let srv = history_at(place, "audit-export").await;
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
