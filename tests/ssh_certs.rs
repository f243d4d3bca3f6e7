//! SSH user certificates checked by OpenSSH itself: `ssh-keygen -L` reads
//! what lockstep says, and a real sshd (Debian's, on loopback, with
//! `TrustedUserCAKeys`, `RevokedKeys` and `AuthorizedPrincipalsFile`)
//! accepts a certificate while its session is open, and refuses it after
//! an early close (the KRL), after `valid_before`, from another CA, and
//! for a principal the policy did not grant.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use common::output_text;
use common::server::TestServer;
use common::sshd::{Sshd, keygen, login_with_certificate};

const POLICY: &str = r#"
auditors = ["token:auditor"]

[[resource]]
match = "ssh:plc7"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["ssh-user"]
ssh = { principals = ["vendor"] }
conditions = { source_networks = ["127.0.0.0/8"] }

[[resource]]
match = "ssh:console"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["ssh-user"]
ssh = { principals = ["vendor"], extensions = [], force_command = "echo forced-command" }

[[resource]]
match = "ssh:other"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["ssh-user"]
ssh = { principals = ["intruder"] }
"#;

/// A public key to certify that no test logs in with.
const SOME_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHUdbWTqbV1b7dsDNYgb7EJ7ZrqCkVAoSTHHCtfHdAvp x@y";

/// An approved `ssh-user` session of `resource` for `secs` seconds.
async fn open_session(srv: &TestServer, resource: &str, secs: u32) -> String {
    let body = json!({"resource": resource, "task": "vendor support", "duration_secs": secs, "profile": "ssh-user"});
    let (status, s) = srv
        .call("POST", "/v1/sessions", Some("alice"), Some(body))
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    s["id"].as_str().unwrap().to_owned()
}

/// `lockstep ssh ID ARGS --json` as alice.
fn lockstep_ssh(srv: &TestServer, id: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["--json", "ssh", id])
        .args(args)
        .env("LOCKSTEP_URL", &srv.url)
        .env("LOCKSTEP_CA", srv.root_pem())
        .env("LOCKSTEP_TOKEN", srv.token("alice"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn refused(sshd: &Sshd, out: &Output, why: &str) {
    assert!(
        !out.status.success() && !text(out).contains("logged-in"),
        "{why}: logged in; sshd: {}",
        sshd.said()
    );
}

/// `ssh-keygen` with `args`, in UTC (it prints validity in local time).
fn ssh_keygen(args: &[&str]) -> String {
    let out = Command::new("ssh-keygen")
        .args(args)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    output_text(&out)
}

#[tokio::test(flavor = "multi_thread")]
async fn sshd_accepts_session_certificates_only_while_their_session_is_open() {
    let srv = TestServer::start("ssh-certs", POLICY, &["alice", "bob", "auditor"], "").await;
    let dir = srv.dir.path();
    let sshd = Sshd::trusting(&srv, "vendor").await;
    let krl = Sshd::krl_path(&srv);

    // A key generated in memory, written 0600 with its certificate.
    let a = open_session(&srv, "ssh:plc7", 600).await;
    let key_a = dir.join("a");
    let issued = lockstep_ssh(
        &srv,
        &a,
        &["--key-out", key_a.to_str().unwrap(), "--host", "127.0.0.1"],
    );
    let cert_a = dir.join("a-cert.pub");
    for f in [&key_a, &cert_a] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    assert_eq!(
        issued["ssh"],
        format!(
            "ssh -i {} -o CertificateFile={} vendor@127.0.0.1",
            key_a.display(),
            cert_a.display()
        )
    );

    // What OpenSSH reads in it is what lockstep said.
    let (_, session) = srv
        .call("GET", &format!("/v1/sessions/{a}"), Some("alice"), None)
        .await;
    assert_eq!(issued["valid_before"], session["closes_at"]);
    let shown = ssh_keygen(&["-L", "-f", cert_a.to_str().unwrap()]);
    let utc = |v: &Value| v.as_str().unwrap().trim_end_matches('Z').to_owned();
    for want in [
        "ecdsa-sha2-nistp256-cert-v01@openssh.com user certificate".to_owned(),
        format!("Serial: {}", issued["serial"].as_str().unwrap()),
        format!("Key ID: \"lockstep session {a} requester token:alice\""),
        format!(
            "Valid: from {} to {}",
            utc(&issued["valid_after"]),
            utc(&issued["valid_before"])
        ),
        "source-address 127.0.0.0/8".to_owned(),
        "permit-pty".to_owned(),
    ] {
        assert!(shown.contains(&want), "`{want}` not in:\n{shown}");
    }
    let principals_shown = shown.split("Principals:").nth(1).unwrap();
    assert_eq!(
        principals_shown.split_whitespace().next(),
        Some("vendor"),
        "{shown}"
    );
    assert!(!shown.contains("permit-port-forwarding"), "{shown}");

    // sshd accepts it while the session is open.
    let out = login_with_certificate(&sshd, &key_a, &cert_a);
    assert_eq!(
        text(&out),
        "logged-in",
        "{} sshd: {}",
        output_text(&out),
        sshd.said()
    );

    // One credential per session: the next mint is refused.
    let (status, e) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{a}/ssh"),
            Some("alice"),
            Some(json!({"public_key": SOME_KEY})),
        )
        .await;
    assert_eq!(status, 409, "{e}");

    // A key of the user's own (`--public-key`), certified beside it; the
    // policy's forced command is what sshd runs.
    let console = open_session(&srv, "ssh:console", 600).await;
    let key_c = dir.join("id_console");
    keygen(&key_c);
    let issued_c = lockstep_ssh(
        &srv,
        &console,
        &["--public-key", &format!("{}.pub", key_c.display())],
    );
    let cert_c = dir.join("id_console-cert.pub");
    assert!(cert_c.exists());
    let fingerprint = ssh_keygen(&["-l", "-f", &format!("{}.pub", key_c.display())]);
    assert!(
        fingerprint.contains(issued_c["fingerprint"].as_str().unwrap()),
        "{fingerprint} / {issued_c}"
    );
    let out = login_with_certificate(&sshd, &key_c, &cert_c);
    assert_eq!(
        text(&out),
        "forced-command",
        "{} sshd: {}",
        output_text(&out),
        sshd.said()
    );

    // A principal the policy granted, but not one this host lets in.
    let other = open_session(&srv, "ssh:other", 600).await;
    let key_o = dir.join("o");
    lockstep_ssh(&srv, &other, &["--key-out", key_o.to_str().unwrap()]);
    refused(
        &sshd,
        &login_with_certificate(&sshd, &key_o, &dir.join("o-cert.pub")),
        "principal intruder",
    );

    // A certificate for the right principal from another CA.
    let rogue = dir.join("rogue_ca");
    keygen(&rogue);
    let shown = ssh_keygen(&[
        "-q",
        "-s",
        rogue.to_str().unwrap(),
        "-I",
        "rogue",
        "-n",
        "vendor",
        "-V",
        "+1h",
        &format!("{}.pub", key_c.display()),
    ]);
    assert!(cert_c.exists(), "{shown}");
    refused(
        &sshd,
        &login_with_certificate(&sshd, &key_c, &cert_c),
        "another CA",
    );

    // Closing the session early revokes its certificate: the KRL lists
    // it (as ssh-keygen reads it) and sshd refuses it.
    assert_eq!(
        srv.call(
            "POST",
            &format!("/v1/sessions/{a}/close"),
            Some("alice"),
            None
        )
        .await
        .0,
        200
    );
    Sshd::fetch_krl(&srv).await;
    let checked = ssh_keygen(&["-Q", "-f", krl.to_str().unwrap(), cert_a.to_str().unwrap()]);
    assert!(checked.contains("REVOKED"), "{checked}");
    let checked = ssh_keygen(&[
        "-Q",
        "-f",
        krl.to_str().unwrap(),
        dir.join("o-cert.pub").to_str().unwrap(),
    ]);
    assert!(checked.contains(": ok"), "{checked}");
    refused(
        &sshd,
        &login_with_certificate(&sshd, &key_a, &cert_a),
        "closed session",
    );
    assert!(sshd.said().contains("revoked"), "{}", sshd.said());

    // A certificate past its valid_before (its session's close time).
    let short = open_session(&srv, "ssh:plc7", 2).await;
    let key_s = dir.join("s");
    let issued_s = lockstep_ssh(&srv, &short, &["--key-out", key_s.to_str().unwrap()]);
    let cert_s = dir.join("s-cert.pub");
    let before: i64 = time_of(&issued_s["valid_before"]);
    while now() <= before {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    refused(
        &sshd,
        &login_with_certificate(&sshd, &key_s, &cert_s),
        "expired",
    );

    // The trail records each with its own facts.
    let (status, page) = srv
        .call(
            "GET",
            &format!("/v1/audit?session={console}"),
            Some("auditor"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let minted = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "minted")
        .unwrap_or_else(|| panic!("{page}"))
        .clone();
    let body: Value = serde_json::from_str(minted["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["kind"], "ssh-certificate", "{minted}");
    assert_eq!(body["principals"], json!(["vendor"]), "{minted}");
    assert_eq!(body["fingerprint"], issued_c["fingerprint"], "{minted}");
    assert_eq!(
        u64::from_str_radix(body["serial"].as_str().unwrap(), 16)
            .unwrap()
            .to_string(),
        issued_c["serial"].as_str().unwrap()
    );
}

fn time_of(v: &Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        v.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    t.unix_timestamp()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_certificates_are_refused_with_a_reason() {
    let srv = TestServer::start("ssh-refusals", POLICY, &["alice", "bob"], "").await;
    let id = open_session(&srv, "ssh:plc7", 600).await;
    let path = format!("/v1/sessions/{id}/ssh");
    for (body, status, code) in [
        (
            json!({"public_key": "not a key"}),
            400,
            "invalid_public_key",
        ),
        (
            json!({"public_key": "ssh-dss AAAAB3NzaC1kc3MAAACBAP"}),
            400,
            "invalid_public_key",
        ),
        (json!({"key": "x"}), 400, "invalid_request"),
    ] {
        let (s, e) = srv
            .call("POST", &path, Some("alice"), Some(body.clone()))
            .await;
        assert_eq!(
            (s, e["error"].as_str().unwrap()),
            (status, code),
            "{body}: {e}"
        );
    }
    // Only the requester.
    let key = SOME_KEY;
    let (s, e) = srv
        .call("POST", &path, Some("bob"), Some(json!({"public_key": key})))
        .await;
    assert_eq!(s, 403, "{e}");
    // Refusals took no slot: the requester still gets the one.
    let (s, e) = srv
        .call(
            "POST",
            &path,
            Some("alice"),
            Some(json!({"public_key": key})),
        )
        .await;
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["principals"], json!(["vendor"]));
    // An X.509 certificate is not minted for an ssh-user session whose
    // policy lists no mtls-client.
    let (s, e) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/certificate"),
            Some("alice"),
            Some(json!({"csr": "x"})),
        )
        .await;
    assert_eq!(s, 403, "{e}");
}
