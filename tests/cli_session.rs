//! The `lockstep` client commands against a running service, and
//! `lockstep serve` itself as a process that stops cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use common::server::TestServer;
use common::{openssl, softhsm};

const POLICY: &str = r#"
operators = ["token:ops"]

[[resource]]
match = "db:payroll"
requesters = ["token:alice"]
approvers = ["token:alice", "token:bob", "token:carol"]
quorum = 2
max_duration = "15m"
profiles = ["mtls-client"]
"#;

fn lockstep(srv: &TestServer, who: &str, args: &[&str]) -> Output {
    srv.cli(who, args)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_workflow_from_the_command_line() {
    let srv = TestServer::start("cli-flow", POLICY, &["alice", "bob", "carol", "ops"], "").await;
    let run = |who: &'static str, args: Vec<String>| {
        let srv_url = srv.url.clone();
        let root = srv.root_pem();
        let token = srv.token(who).to_owned();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_lockstep"))
                .args(&args)
                .env("LOCKSTEP_URL", srv_url)
                .env("LOCKSTEP_CA", root)
                .env("LOCKSTEP_TOKEN", token)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let out = run(
        "alice",
        args(&[
            "request",
            "--resource",
            "db:payroll",
            "--task",
            "rotate the payroll DB password",
            "--duration",
            "2m",
            "--json",
        ]),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let s = json(&out);
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(s["duration_secs"], 120);

    // Self-approval refused; approval without a terminal needs --yes.
    let out = run("alice", args(&["approve", &id, "--yes"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("error[self_approval]"),
        "{}",
        text(&out)
    );
    let out = run("bob", args(&["approve", &id])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--yes"), "{}", text(&out));

    // `wait` shows progress until the second approval opens the session.
    let waiter = run("alice", args(&["wait", &id]));
    let out = run("bob", args(&["approve", &id, "--yes"])).await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(1 of 2)"), "{}", text(&out));
    let out = run("carol", args(&["approve", &id, "--yes", "--json"]))
        .await
        .unwrap();
    assert_eq!(json(&out)["state"], "open");
    let out = waiter.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("open, approved by token:bob, token:carol"),
        "{}",
        text(&out)
    );

    // `cert`: key generated locally, written 0600 only because asked.
    let dir = srv.dir.path().to_owned();
    let (key, cert, chain) = (dir.join("k.pem"), dir.join("c.pem"), dir.join("chain.pem"));
    let p = |x: &std::path::Path| x.to_str().unwrap().to_owned();
    let out = run(
        "alice",
        vec![
            "cert".into(),
            id.clone(),
            "--key-out".into(),
            p(&key),
            "--cert-out".into(),
            p(&cert),
            "--chain-out".into(),
            p(&chain),
        ],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (ok, t) = openssl(&[
        "verify",
        "-CAfile",
        srv.root_pem().to_str().unwrap(),
        "-untrusted",
        &p(&chain),
        &p(&cert),
    ]);
    assert!(ok, "{t}");
    let (_, from_key) = openssl(&["pkey", "-in", &p(&key), "-pubout"]);
    let (_, from_cert) = openssl(&["x509", "-in", &p(&cert), "-noout", "-pubkey"]);
    assert_eq!(
        from_key, from_cert,
        "the certificate holds the generated key"
    );
    let out = run(
        "alice",
        vec![
            "cert".into(),
            id.clone(),
            "--key-out".into(),
            p(&dir.join("k2.pem")),
            "--cert-out".into(),
            p(&dir.join("c2.pem")),
        ],
    )
    .await
    .unwrap();
    assert!(
        text(&out).contains("error[credential_limit_reached]"),
        "{}",
        text(&out)
    );
    assert!(
        !dir.join("k2.pem").exists(),
        "a refused cert must not leave a key behind"
    );

    let out = run("alice", args(&["status", &id])).await.unwrap();
    assert!(
        text(&out).contains("credentials 1 of 1 minted"),
        "{}",
        text(&out)
    );
    let out = run("alice", args(&["close", &id])).await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = run("alice", args(&["status", &id, "--json"]))
        .await
        .unwrap();
    assert_eq!(json(&out)["close_reason"], "completed");

    // A denied session makes `wait` fail.
    let out = run(
        "alice",
        args(&[
            "request",
            "--resource",
            "db:payroll",
            "--task",
            "again",
            "--duration",
            "1m",
            "--json",
        ]),
    )
    .await
    .unwrap();
    let id2 = json(&out)["id"].as_str().unwrap().to_owned();
    let out = run(
        "carol",
        args(&["deny", &id2, "--yes", "--reason", "not today"]),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = run("alice", args(&["wait", &id2])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("denied"), "{}", text(&out));

    // Listing, and bad input.
    let out = run("bob", args(&["status"])).await.unwrap();
    assert!(
        text(&out).contains(&id) && text(&out).contains(&id2),
        "{}",
        text(&out)
    );
    let out = run(
        "alice",
        args(&[
            "request",
            "--resource",
            "db:payroll",
            "--task",
            "x",
            "--duration",
            "soon",
        ]),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects a bad duration");
    let out = run(
        "alice",
        args(&[
            "request",
            "--resource",
            "db:payroll",
            "--task",
            "x",
            "--duration",
            "1h",
        ]),
    )
    .await
    .unwrap();
    assert!(
        text(&out).contains("error[invalid_duration]"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_without_server_or_token_are_clear() {
    let srv = TestServer::start("cli-errors", POLICY, &["alice"], "").await;
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["status"])
        .env("LOCKSTEP_URL", &srv.url)
        .env("LOCKSTEP_CA", srv.root_pem())
        .env_remove("LOCKSTEP_TOKEN")
        .output()
        .unwrap();
    assert!(
        text(&out).contains("error[invalid_argument]: no token"),
        "{}",
        text(&out)
    );
    let mut out = lockstep(&srv, "alice", &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    // Without the lockstep root, the server is not trusted.
    out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["status", "--url", &srv.url])
        .env("LOCKSTEP_TOKEN", srv.token("alice"))
        .env_remove("LOCKSTEP_CA")
        .output()
        .unwrap();
    assert!(
        text(&out).contains("error[connection_failed]"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(srv.token("alice")), "token echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_as_a_process_and_stops_on_sigterm() {
    let mut srv = TestServer::start("cli-serve", POLICY, &["alice"], "").await;
    srv.stop().await;
    // This time callers' tokens come from a tokens file that
    // `lockstep auth add-token` maintains (the inline tokens are dropped).
    let config = std::fs::read_to_string(&srv.config_path).unwrap();
    let without_inline = config.split("[[auth.token]]").next().unwrap();
    std::fs::write(
        &srv.config_path,
        format!("{without_inline}\n[auth]\ntokens_file = \"tokens.toml\"\n"),
    )
    .unwrap();
    let cfg = srv.config_path.to_str().unwrap().to_owned();
    let add = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["--config", &cfg, "auth", "add-token", "alice", "--out"])
        .arg(srv.dir.path().join("alice.token"))
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", text(&add));
    let again = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["--config", &cfg, "auth", "add-token", "alice"])
        .output()
        .unwrap();
    assert!(text(&again).contains("--replace"), "{}", text(&again));
    let tokens_file = std::fs::read_to_string(srv.dir.path().join("tokens.toml")).unwrap();
    let token = std::fs::read_to_string(srv.dir.path().join("alice.token")).unwrap();
    assert!(
        !tokens_file.contains(token.trim()),
        "the tokens file holds hashes only"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["--config", &cfg, "serve", "--listen", "127.0.0.1:0"])
        .env("SOFTHSM2_CONF", &softhsm().conf)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited early"
        );
        if let Some(rest) = line.trim().strip_prefix("lockstep serving on ") {
            break rest.to_owned();
        }
    };
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["status", "--url", &url, "--ca"])
        .arg(srv.root_pem())
        .arg("--token-file")
        .arg(srv.dir.path().join("alice.token"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(rest.contains("lockstep stopped"), "{rest}");
}
