//! An SSH session through `lockstep connect` and a gateway route to a real
//! sshd (Debian's openssh-server on loopback), logged in with the
//! session's SSH certificate: `ssh -o ProxyCommand=…` logs in while the
//! session is open, and closing the session ends the SSH session, which
//! sshd itself would not do (it checks certificates and the KRL only at
//! login).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use common::gateway::{ISSUER, Killed, certificate_for, close, start_gateway};
use common::output_text;
use common::server::TestServer;
use common::sshd::{Sshd, ssh, user};

const POLICY: &str = r#"
[[resource]]
match = "ssh:plc7"
requesters = ["token:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["ssh-user", "mtls-client"]
credentials = 2
ssh = { principals = ["vendor"] }

[[gateway]]
identities = ["token:gw"]
resources = ["ssh:plc7"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_session_ends_an_ssh_session_through_the_gateway() {
    let srv = TestServer::start("gateway-ssh", POLICY, &["alice", "bob", "gw"], ISSUER).await;
    let dir = srv.dir.path();
    let sshd = Sshd::trusting(&srv, "vendor").await;
    let gw = start_gateway(&srv, sshd.addr, "ssh:plc7", "per_session = 2");

    // One ssh-user session: its SSH certificate for sshd, its client
    // certificate for the gateway.
    let body = json!({"resource": "ssh:plc7", "task": "vendor support", "duration_secs": 600, "profile": "ssh-user"});
    let (status, s) = srv
        .call("POST", "/v1/sessions", Some("alice"), Some(body))
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(srv.vote("bob", &s, "approve").await.0, 200);
    let id = s["id"].as_str().unwrap();
    let key = dir.join("vendor");
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["ssh", id, "--key-out", key.to_str().unwrap()])
        .env("LOCKSTEP_URL", &srv.url)
        .env("LOCKSTEP_CA", srv.root_pem())
        .env("LOCKSTEP_TOKEN", srv.token("alice"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let c = certificate_for(&srv, id).await;

    let proxy = format!(
        "{} connect {} --cert {} --key {} --chain {} --gateway-ca {}",
        env!("CARGO_BIN_EXE_lockstep"),
        gw.addr,
        c.cert.display(),
        c.key.display(),
        c.chain.display(),
        gw.ca.display()
    );
    let mut ssh = Killed(
        ssh()
            .arg("-T")
            .arg("-i")
            .arg(&key)
            .arg("-o")
            .arg(format!(
                "CertificateFile={}",
                dir.join("vendor-cert.pub").display()
            ))
            .arg("-o")
            .arg(format!("ProxyCommand={proxy}"))
            .arg(format!("{}@plc7", user()))
            .arg("echo logged-in; sleep 120")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(ssh.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "logged-in", "sshd log: {}", sshd.said());
    assert!(
        sshd.said().contains(&format!("lockstep session {id}")),
        "{}",
        sshd.said()
    );

    close(&srv, &c, "close").await;
    let until = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(code) = ssh.0.try_wait().unwrap() {
            break code;
        }
        assert!(
            Instant::now() < until,
            "the SSH session outlived its lockstep session"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !code.success(),
        "ssh ended as if the remote command had finished"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(ssh.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("lockstep connect: the tunnel ended"),
        "ssh stderr: {err}"
    );
}
