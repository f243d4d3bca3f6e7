//! Several `lockstep serve` processes on one PostgreSQL database keep
//! every rule: approvals reaching different processes open a session
//! once, mints through both never pass a session's count, a process
//! killed mid-run leaves the other serving, every acknowledged
//! credential is on the record, and the trail is one dense hash chain
//! that `lockstep audit verify` checks from the database. A close through
//! one replica is seen at once by the others' OCSP, CRL and introspection,
//! and the expiry sweep of three replicas closes each session once.
//! (tests/shared_store.rs kills and restarts a replica under load on both
//! stores.)
#![cfg(feature = "postgres")]

mod common;

use std::io::BufRead;
use std::path::Path;
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

[[resource]]
match = "svc:*"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
credentials = 3
profiles = ["mtls-client", "token"]
audiences = ["api"]
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
    send(srv, url, who, "POST", path, Some(body)).await
}

async fn send(
    srv: &TestServer,
    url: &str,
    who: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = srv
        .http
        .request(method.parse().unwrap(), format!("{url}{path}"));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req
        .bearer_auth(srv.token(who))
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
    let verify = || common::audit_verify_config(&srv.config_path);
    let (ok, text) = verify();
    assert!(ok, "{text}");
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

/// A session on `resource` requested through `url` and approved by bob
/// through `approve_at`; returns its id.
async fn open_session(
    srv: &TestServer,
    url: &str,
    approve_at: &str,
    resource: &str,
    secs: u32,
) -> String {
    let body = json!({"resource": resource, "task": "replicas", "duration_secs": secs, "profile": "mtls-client"});
    let (status, s) = call(srv, url, "alice", "/v1/sessions", body).await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    let vote = json!({"request_hash": s["request_hash"]});
    let path = format!("/v1/sessions/{id}/approve");
    let (status, v) = call(srv, approve_at, "bob", &path, vote).await;
    assert_eq!(status, 200, "{v}");
    id
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `openssl ocsp` asking the replica at `url` about `leaf` (a file, or
/// `-serial 0x…`) under the issuing CA in `issuing`; the response must
/// verify. Returns openssl's text.
fn ocsp_as(srv: &TestServer, url: &str, issuing: &Path, leaf: &[&str]) -> String {
    let mut args = vec!["ocsp", "-issuer", s(issuing)];
    args.extend_from_slice(leaf);
    let url = format!("{url}/v1/ocsp");
    let root = srv.root_pem();
    args.extend_from_slice(&["-url", &url, "-CAfile", s(&root)]);
    let (ok, text) = common::openssl(&args);
    assert!(ok && text.contains("Response verify OK"), "{text}");
    text
}

fn ocsp(srv: &TestServer, url: &str, leaf: &Path) -> String {
    let issuing = srv.dir.path().join("ca/issuing.pem");
    ocsp_as(srv, url, &issuing, &["-cert", s(leaf)])
}

/// `openssl verify -crl_check` of `leaf` (issued under the CA in `ca`)
/// against `crl`.
fn verify_against(srv: &TestServer, ca: &Path, leaf: &Path, crl: &Path) -> (bool, String) {
    let issuing = ca.join("issuing.pem");
    common::openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        s(&srv.root_pem()),
        "-untrusted",
        s(&issuing),
        "-CRLfile",
        s(crl),
        s(leaf),
    ])
}

/// `openssl verify -crl_check` of `leaf` against the CRL the replica at
/// `url` serves now.
async fn verify_with_crl(srv: &TestServer, url: &str, leaf: &Path, name: &str) -> (bool, String) {
    let crl = srv.crl_pem(url, name).await;
    verify_against(srv, &srv.dir.path().join("ca"), leaf, &crl)
}

async fn introspect(srv: &TestServer, url: &str, token: &str) -> bool {
    let resp = srv
        .http
        .post(format!("{url}/v1/introspect"))
        .bearer_auth(srv.token("bob"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()["active"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_through_one_replica_is_revoked_at_once_on_the_others() {
    let mut srv = TestServer::start_in(
        StoreKind::Postgres,
        "replicas-close",
        POLICY,
        &["alice", "bob"],
        "",
    )
    .await;
    srv.stop().await;
    let (mut a, url_a) = serve(&srv);
    let (mut b, url_b) = serve(&srv);
    for round in 0..3 {
        let id = open_session(&srv, &url_a, &url_b, &format!("svc:r{round}"), 600).await;
        // Minted through B; B's CRL, OCSP and introspection have answered
        // about it (anything B caches is warm) before A closes it.
        let (_, csr) = common::openssl_csr(srv.dir.path(), &format!("leaf{round}"), "ec:P-256");
        let path = format!("/v1/sessions/{id}/certificate");
        let csr = String::from_utf8(csr).unwrap();
        let (status, cert) = call(&srv, &url_b, "alice", &path, json!({"csr": csr})).await;
        assert_eq!(status, 201, "{cert}");
        let leaf = common::write(
            srv.dir.path(),
            &format!("leaf{round}.pem"),
            cert["certificate"].as_str().unwrap(),
        );
        let path = format!("/v1/sessions/{id}/token");
        let (status, tok) = call(&srv, &url_b, "alice", &path, json!({"audience": "api"})).await;
        assert_eq!(status, 201, "{tok}");
        let token = tok["token"].as_str().unwrap().to_owned();
        let (ok, text) = verify_with_crl(&srv, &url_b, &leaf, &format!("before{round}")).await;
        assert!(ok, "{text}");
        assert!(ocsp(&srv, &url_b, &leaf).contains(": good"));
        assert!(introspect(&srv, &url_b, &token).await);

        let (status, v) = call(
            &srv,
            &url_a,
            "alice",
            &format!("/v1/sessions/{id}/close"),
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{v}");

        // The moment A's answer is back, B says revoked everywhere.
        let text = ocsp(&srv, &url_b, &leaf);
        assert!(text.contains(": revoked"), "round {round}: {text}");
        let (ok, text) = verify_with_crl(&srv, &url_b, &leaf, &format!("after{round}")).await;
        assert!(
            !ok && text.contains("certificate revoked"),
            "round {round}: {text}"
        );
        assert!(!introspect(&srv, &url_b, &token).await, "round {round}");
    }
    for child in [&mut a, &mut b] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_expiry_sweep_of_three_replicas_closes_each_session_once() {
    let mut srv = TestServer::start_in(
        StoreKind::Postgres,
        "replicas-expiry",
        POLICY,
        &["alice", "bob"],
        "",
    )
    .await;
    srv.stop().await;
    let mut replicas: Vec<(Child, String)> = (0..3).map(|_| serve(&srv)).collect();
    let urls: Vec<String> = replicas.iter().map(|(_, u)| u.clone()).collect();
    let mut sessions = Vec::new();
    for i in 0..9 {
        let (at, approve_at) = (&urls[i % 3], &urls[(i + 1) % 3]);
        sessions.push(open_session(&srv, at, approve_at, &format!("svc:e{i}"), 2).await);
    }
    // Until they are all past their close time, every replica reads every
    // session too: a read finding a session due saves its expiry as well.
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < deadline {
        for (i, id) in sessions.iter().enumerate() {
            let (status, _) = send(
                &srv,
                &urls[i % 3],
                "alice",
                "GET",
                &format!("/v1/sessions/{id}"),
                None,
            )
            .await;
            assert_eq!(status, 200);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = srv.store();
    for id in &sessions {
        let closed = store
            .texts(&format!(
                "SELECT body FROM events WHERE kind = 'closed' AND session_id = '{id}'"
            ))
            .await;
        assert_eq!(closed.len(), 1, "session {id}: {closed:?}");
        assert!(closed[0].contains("expired"), "{closed:?}");
        for url in &urls {
            let (_, view) = send(
                &srv,
                url,
                "alice",
                "GET",
                &format!("/v1/sessions/{id}"),
                None,
            )
            .await;
            assert_eq!(view["close_reason"], "expired", "{view}");
        }
    }
    for (child, _) in &mut replicas {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// A certificate for session `id` minted through the replica at `url`,
/// written to `<name>.pem`; returns the file and its serial.
async fn mint_leaf(
    srv: &TestServer,
    url: &str,
    id: &str,
    name: &str,
) -> (std::path::PathBuf, String) {
    let (_, csr) = common::openssl_csr(srv.dir.path(), name, "ec:P-256");
    let path = format!("/v1/sessions/{id}/certificate");
    let body = json!({"csr": String::from_utf8(csr).unwrap()});
    let (status, cert) = call(srv, url, "alice", &path, body).await;
    assert_eq!(status, 201, "{cert}");
    let file = common::write(
        srv.dir.path(),
        &format!("{name}.pem"),
        cert["certificate"].as_str().unwrap(),
    );
    (file, cert["serial"].as_str().unwrap().to_owned())
}

fn cli(config: &Path, args: &[&str]) -> String {
    cli_on(&common::softhsm().conf, config, args)
}

/// `lockstep --config CONFIG ARGS…` with the SoftHSM2 configuration
/// `softhsm_conf`; it must succeed. Returns what it printed.
fn cli_on(softhsm_conf: &Path, config: &Path, args: &[&str]) -> String {
    let mut all = vec!["--config", s(config)];
    all.extend_from_slice(args);
    let out = common::lockstep_cli_on(softhsm_conf, &all);
    let text = common::output_text(&out);
    assert!(out.status.success(), "lockstep {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_with_issuing_keys_of_their_own_answer_for_their_own_certificates() {
    let mut srv =
        TestServer::start_in(StoreKind::Postgres, "own-a", POLICY, &["alice", "bob"], "").await;
    srv.stop().await;
    // Replica B: the same configuration on a token of its own (its
    // "machine's" device), with an issuing CA of its own under A's root.
    let b_dir = tempfile::tempdir().unwrap();
    let a_text = std::fs::read_to_string(&srv.config_path).unwrap();
    // A token in a SoftHSM2 store of its own: B's processes see only it,
    // and making it disturbs no other test's processes.
    let hsm = common::softhsm();
    let b_token = hsm.isolated_token("own-b");
    let b_text = a_text
        .replace(
            &format!("token_label = \"{}\"", hsm.token),
            &format!("token_label = \"{}\"", b_token.label),
        )
        .replace("own-a-postgres Issuing CA", "own-b Issuing CA");
    assert_ne!(a_text, b_text);
    let b_config = common::write(b_dir.path(), "lockstep.toml", &b_text);
    std::fs::copy(
        srv.dir.path().join("policy.toml"),
        b_dir.path().join("policy.toml"),
    )
    .unwrap();
    cli_on(&b_token.conf, &b_config, &["init", "--external-root"]);
    let csr = b_dir.path().join("ca/issuing.csr.pem");
    let chain = b_dir.path().join("chain.pem");
    let text = cli(
        &srv.config_path,
        &["certify-issuer", "--csr", s(&csr), "--out", s(&chain)],
    );
    assert!(text.contains("own-b Issuing CA"), "{text}");
    cli_on(
        &b_token.conf,
        &b_config,
        &["init", "--install-chain", s(&chain)],
    );

    let (mut a, url_a) = serve(&srv);
    let (child, stderr, url_b) = common::server::spawn_serve_on(
        env!("CARGO_BIN_EXE_lockstep"),
        &b_config,
        "warn",
        &b_token.conf,
    );
    std::thread::spawn(move || for _ in stderr.lines() {});
    let mut b = child;
    let id = open_session(&srv, &url_a, &url_b, "svc:own", 600).await;
    let (leaf_a, serial_a) = mint_leaf(&srv, &url_a, &id, "own-leaf-a").await;
    let (leaf_b, serial_b) = mint_leaf(&srv, &url_b, &id, "own-leaf-b").await;
    let (ca_a, ca_b) = (srv.dir.path().join("ca"), b_dir.path().join("ca"));
    let (issuing_a, issuing_b) = (ca_a.join("issuing.pem"), ca_b.join("issuing.pem"));

    // Each chains to the one root through its own issuing CA.
    for (leaf, ca) in [(&leaf_a, &ca_a), (&leaf_b, &ca_b)] {
        let (ok, text) = common::openssl(&[
            "verify",
            "-CAfile",
            s(&srv.root_pem()),
            "-untrusted",
            s(&ca.join("issuing.pem")),
            s(leaf),
        ]);
        assert!(ok, "{text}");
    }
    let (ok, _) = common::openssl(&[
        "verify",
        "-CAfile",
        s(&srv.root_pem()),
        "-untrusted",
        s(&issuing_a),
        s(&leaf_b),
    ]);
    assert!(!ok, "B's certificate is not A's issuing CA's");
    // A does not vouch for B's serial under its own issuing CA.
    let forged = format!("0x{serial_b}");
    let text = ocsp_as(&srv, &url_a, &issuing_a, &["-serial", &forged]);
    assert!(text.contains(": unknown"), "{text}");
    assert!(ocsp_as(&srv, &url_b, &issuing_b, &["-cert", s(&leaf_b)]).contains(": good"));

    let (status, v) = call(
        &srv,
        &url_a,
        "alice",
        &format!("/v1/sessions/{id}/close"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // Each replica answers revoked for its own certificate at once, and
    // lists only its own on its CRL, signed by its own issuing CA.
    let text = ocsp_as(&srv, &url_a, &issuing_a, &["-cert", s(&leaf_a)]);
    assert!(text.contains(": revoked"), "{text}");
    let text = ocsp_as(&srv, &url_b, &issuing_b, &["-cert", s(&leaf_b)]);
    assert!(text.contains(": revoked"), "{text}");
    let text = ocsp_as(&srv, &url_a, &issuing_a, &["-serial", &forged]);
    assert!(text.contains(": unknown"), "{text}");
    for (url, leaf, ca, own, other, name) in [
        (&url_a, &leaf_a, &ca_a, &serial_a, &serial_b, "own-a"),
        (&url_b, &leaf_b, &ca_b, &serial_b, &serial_a, "own-b"),
    ] {
        let crl = srv.crl_pem(url, name).await;
        let (ok, text) = common::openssl(&[
            "crl",
            "-in",
            s(&crl),
            "-noout",
            "-text",
            "-verify",
            "-CAfile",
            s(&ca.join("chain.pem")),
        ]);
        assert!(ok && text.contains("verify OK"), "{text}");
        let listed = text.to_uppercase();
        assert!(listed.contains(&own.to_uppercase()), "{name}: {text}");
        assert!(!listed.contains(&other.to_uppercase()), "{name}: {text}");
        let (ok, text) = verify_against(&srv, ca, leaf, &crl);
        assert!(
            !ok && text.contains("certificate revoked"),
            "{name}: {text}"
        );
    }
    for child in [&mut a, &mut b] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
